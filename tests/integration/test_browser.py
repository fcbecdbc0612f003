"""The web page in a real browser: headless Chromium (Debian's, through chromedriver) uploads a
video made by ffmpeg, finds it, and plays it until the video element can play."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.harness import RunningCluster
from tests.media import make_video

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found: 'platform.sh test' installs Debian's chromium and "
            "chromium-driver as root, or: apt-get install -y chromium chromium-driver"
        )
    profile = tempfile.mkdtemp(prefix="videodb-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # no traffic beyond loopback
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def player_state(driver: WebDriver) -> dict[str, object]:
    state = driver.execute_script(
        "const p = document.getElementById('player');"
        "return {ready: p.readyState, error: p.error && p.error.message, src: p.currentSrc,"
        " duration: p.duration, width: p.videoWidth};"
    )
    assert isinstance(state, dict)
    return state


@pytest.mark.parametrize("kind", ["webm", "mp4"])
def test_the_page_uploads_finds_and_plays_a_video(
    cluster: RunningCluster, browser: WebDriver, tmp_path: Path, kind: str
) -> None:
    video = make_video(tmp_path / f"clip.{kind}", seconds=2)
    title = f"browser {kind} {uuid.uuid4().hex[:8]}"
    browser.get(cluster.app_url("web") + "/")
    wait = WebDriverWait(browser, 30)
    browser.find_element(By.ID, "file").send_keys(str(video))
    browser.find_element(By.ID, "title").send_keys(title)
    browser.find_element(By.ID, "tags").send_keys("browser, e2e")
    browser.find_element(By.ID, "upload-btn").click()
    wait.until(lambda d: "uploaded" in d.find_element(By.ID, "status").text)
    # The page plays what it just uploaded: the element must reach HAVE_FUTURE_DATA (3) or more.
    wait.until(lambda d: int(str(player_state(d)["ready"])) >= 3 or player_state(d)["error"])
    state = player_state(browser)
    assert state["error"] is None, state
    assert str(state["src"]).endswith("/stream"), state
    assert float(str(state["duration"])) > 1.0 and state["width"] == 320, state

    # Find it through the search box and play it from the list.
    browser.execute_script("document.getElementById('player').removeAttribute('src')")
    search = browser.find_element(By.ID, "search")
    search.clear()
    search.send_keys(title)
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(lambda d: title in d.find_element(By.ID, "results").text)
    items = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(items) == 1 and title in items[0].text
    items[0].find_element(By.CSS_SELECTOR, "button.play").click()
    wait.until(lambda d: int(str(player_state(d)["ready"])) >= 3 or player_state(d)["error"])
    assert player_state(browser)["error"] is None

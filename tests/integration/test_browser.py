"""The web page in a real browser (headless Chromium, Debian's, through chromedriver), at a
phone's width and a desktop's: upload with progress, the grid with posters and durations,
paging, the watch view (player at the top, visible without scrolling), views, edit, delete, a
search with no result, a stale message cleared, and /docs without any CDN. Layout is checked
by assertions (no horizontal scroll, the player in view); screenshots are kept in the test's
temporary directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.chromium import viewport
from tests.integration.harness import RunningCluster
from tests.media import make_video

pytestmark = pytest.mark.integration

SIZES = {"phone": (390, 844), "desktop": (1280, 800)}


def js(driver: WebDriver, script: str) -> Any:
    return driver.execute_script(script)


def player_state(driver: WebDriver) -> dict[str, Any]:
    state = js(
        driver,
        "const p = document.getElementById('player');"
        "return {ready: p.readyState, error: p.error && p.error.message, src: p.currentSrc,"
        " attr: p.getAttribute('src'), paused: p.paused, duration: p.duration,"
        " width: p.videoWidth};",
    )
    assert isinstance(state, dict)
    return state


def layout(driver: WebDriver) -> dict[str, Any]:
    found = js(
        driver,
        "const p = document.getElementById('player').getBoundingClientRect();"
        "const d = document.documentElement;"
        "return {scroll: d.scrollWidth, client: d.clientWidth, inner: window.innerHeight,"
        " top: p.top, bottom: p.bottom, left: p.left, right: p.right};",
    )
    assert isinstance(found, dict)
    return found


def no_horizontal_scroll(driver: WebDriver) -> None:
    shape = layout(driver)
    assert shape["scroll"] <= shape["client"], f"the page scrolls sideways: {shape}"


def playing(driver: WebDriver) -> bool:
    state = player_state(driver)
    assert state["error"] is None, state
    return int(state["ready"]) >= 3


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def cards(driver: WebDriver) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#grid .card"))


def search(driver: WebDriver, wait: WebDriverWait[WebDriver], words: str) -> None:
    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys(words)
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(lambda d: words in text_of(d, "summary") or d.find_elements(By.ID, "no-results"))


def api_video(cluster: RunningCluster, video_id: str) -> httpx.Response:
    return httpx.get(f"{cluster.app_url('web')}/api/videos/{video_id}", timeout=10)


@contextmanager
def evidence(driver: WebDriver, folder: Path, name: str) -> Iterator[None]:
    """On a failure, keep what the page showed: a screenshot, its message, the console."""
    try:
        yield
    except BaseException:
        shot = folder / f"{name}-failure.png"
        driver.save_screenshot(str(shot))
        said = js(driver, "return document.getElementById('message').textContent")
        console = driver.get_log("browser")  # type: ignore[attr-defined]
        print(f"\npage at failure: {shot}; message {said!r}; console {console}")
        raise


@pytest.mark.parametrize("size", list(SIZES))
def test_the_page_at_phone_and_desktop_width(
    cluster: RunningCluster, browser: WebDriver, tmp_path: Path, size: str
) -> None:
    with evidence(browser, tmp_path, size):
        page_at_size(cluster, browser, tmp_path, size)


def page_at_size(cluster: RunningCluster, browser: WebDriver, tmp_path: Path, size: str) -> None:
    width, height = SIZES[size]
    viewport(browser, width, height)
    word = f"w{uuid.uuid4().hex[:10]}"
    clips = [make_video(tmp_path / f"clip{i}.{kind}") for i, kind in enumerate(("webm", "mp4"))]
    web = cluster.app_url("web")
    # Two videos through the API, one through the page: three results, two pages of two.
    for i, clip in enumerate(clips):
        with clip.open("rb") as f:
            made = httpx.post(
                f"{web}/api/videos",
                files={"file": (clip.name, f, f"video/{clip.suffix[1:]}")},
                data={"title": f"{word} api {i}"},
                timeout=60,
            )
        assert made.status_code == 201, made.text
    browser.get(f"{web}/?page_size=2")
    wait = WebDriverWait(browser, 30)
    no_horizontal_scroll(browser)

    # Upload through the page: progress to 100 %, then the watch view plays it, player on top.
    browser.find_element(By.ID, "show-upload").click()
    browser.find_element(By.ID, "file").send_keys(str(clips[1]))
    browser.find_element(By.ID, "title").send_keys(f"{word} page upload")
    browser.find_element(By.ID, "tags").send_keys("browser, e2e")
    browser.find_element(By.ID, "description").send_keys("uploaded through the page")
    browser.find_element(By.ID, "upload-btn").click()
    wait.until(lambda d: "uploaded" in text_of(d, "message"))
    peak = browser.find_element(By.ID, "progress").get_attribute("data-peak")
    assert peak == "100", f"the progress bar's highest value was {peak}"
    wait.until(lambda d: not d.find_element(By.ID, "watch").get_attribute("hidden"))
    wait.until(playing)
    state = player_state(browser)
    assert str(state["src"]).endswith("/stream") and state["width"] == 320, state
    shape = layout(browser)
    assert shape["top"] >= 0 and shape["bottom"] <= shape["inner"], f"player not in view: {shape}"
    assert shape["right"] <= shape["client"], shape
    no_horizontal_scroll(browser)
    assert f"{word} page upload" == text_of(browser, "watch-title")
    assert "uploaded through the page" in text_of(browser, "watch-description")
    assert text_of(browser, "watch-tags").split() == ["browser", "e2e"]
    browser.save_screenshot(str(tmp_path / f"{size}-watch.png"))

    # The grid: search, two pages, posters loaded, durations shown.
    search(browser, wait, word)
    assert text_of(browser, "summary").startswith(f'3 results for "{word}"')
    wait.until(lambda d: len(cards(d)) == 2)
    wait.until(
        lambda d: js(
            d,
            "return [...document.querySelectorAll('#grid .card img')]"
            ".every(i => i.complete && i.naturalWidth > 0)",
        )
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card img")) == 2
    badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#grid .badge")]
    assert badges == ["0:02", "0:02"], badges
    assert text_of(browser, "page-info") == "Page 1 of 2"
    no_horizontal_scroll(browser)
    browser.save_screenshot(str(tmp_path / f"{size}-grid.png"))
    first_page = {c.get_attribute("data-id") for c in cards(browser)}
    browser.find_element(By.ID, "next").click()
    wait.until(lambda d: text_of(d, "page-info") == "Page 2 of 2" and len(cards(d)) == 1)
    last = cards(browser)[0]
    last_id = str(last.get_attribute("data-id"))
    assert last_id not in first_page

    # Watch it from the grid; a view is counted, and shown as "1 view" when it is one.
    last.click()
    wait.until(lambda d: not d.find_element(By.ID, "watch").get_attribute("hidden"))
    wait.until(playing)
    assert js(browser, "return window.scrollY") == 0
    shape = layout(browser)
    assert shape["top"] >= 0 and shape["bottom"] <= shape["inner"], f"player not in view: {shape}"
    wait.until(lambda _: api_video(cluster, last_id).json()["views"] >= 1)
    browser.find_element(By.ID, "close-btn").click()
    search(browser, wait, word)
    browser.find_element(By.ID, "next").click()
    wait.until(lambda d: text_of(d, "page-info") == "Page 2 of 2")
    cards(browser)[0].click()
    wait.until(lambda d: str(d.find_element(By.ID, "watch-title").text).startswith(word))
    counted = api_video(cluster, last_id).json()["views"]
    shown = text_of(browser, "watch-meta").split(" · ")[0]
    assert shown == (f"{counted} view" if counted == 1 else f"{counted} views"), shown

    # Edit the title; it shows at once, and the API has it.
    browser.find_element(By.ID, "edit-btn").click()
    title_box = browser.find_element(By.ID, "edit-title")
    title_box.clear()
    title_box.send_keys(f"{word} renamed")
    browser.find_element(By.ID, "save-btn").click()
    wait.until(lambda d: text_of(d, "watch-title") == f"{word} renamed")
    assert api_video(cluster, last_id).json()["title"] == f"{word} renamed"

    # Delete it (the page asks first).
    browser.find_element(By.ID, "delete-btn").click()
    browser.switch_to.alert.accept()
    wait.until(lambda d: "deleted" in text_of(d, "message"))
    assert browser.find_element(By.ID, "watch").get_attribute("hidden")
    assert api_video(cluster, last_id).status_code == 404
    assert player_state(browser)["attr"] is None

    # A search with no result says so and stops the player.
    cards(browser)[0].click()
    wait.until(playing)
    search(browser, wait, f"nothing{uuid.uuid4().hex}")
    assert "No videos match" in text_of(browser, "no-results")
    no_horizontal_scroll(browser)  # however long the words searched
    assert browser.find_element(By.ID, "watch").get_attribute("hidden")
    stopped = player_state(browser)
    assert stopped["paused"] and stopped["attr"] is None, stopped

    # A refused upload's message stays until the user does something else.
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video\n" * 50)
    browser.find_element(By.ID, "show-upload").click()
    browser.find_element(By.ID, "file").send_keys(str(junk))
    browser.find_element(By.ID, "title").send_keys("junk")
    browser.find_element(By.ID, "upload-btn").click()
    wait.until(lambda d: "upload failed" in text_of(d, "message"))
    message = browser.find_element(By.ID, "message")
    assert message.get_attribute("class") == "error" and "video" in message.text
    no_horizontal_scroll(browser)
    browser.save_screenshot(str(tmp_path / f"{size}-error.png"))
    browser.find_element(By.ID, "search").send_keys("x")
    wait.until(lambda d: text_of(d, "message") == "")


def test_the_api_docs_render_with_no_cdn(cluster: RunningCluster, browser: WebDriver) -> None:
    viewport(browser, *SIZES["desktop"])
    web = cluster.app_url("web")
    browser.get(f"{web}/docs")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")
    )
    assert "video platform" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info").text
    fetched = js(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(str(url).startswith(web) for url in fetched), fetched

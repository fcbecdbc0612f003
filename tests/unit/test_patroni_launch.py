"""The launcher shortens the poll of the Patroni release installed here, and only that."""

from __future__ import annotations

import patroni.postgresql as postgresql
import pytest

import videodb.cluster.patroni_launch as patroni_launch


def test_the_installed_patroni_has_the_poll_and_the_launcher_shortens_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert postgresql.STOP_POLLING_INTERVAL == 1  # Patroni's own value, before the launcher
    monkeypatch.setattr(postgresql, "STOP_POLLING_INTERVAL", 1)
    patroni_launch.tune()
    assert postgresql.STOP_POLLING_INTERVAL == patroni_launch.STOP_POLL_S == 0.25


def test_a_patroni_without_the_poll_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(postgresql, "STOP_POLLING_INTERVAL")
    with pytest.raises(SystemExit, match="STOP_POLLING_INTERVAL is missing"):
        patroni_launch.tune()

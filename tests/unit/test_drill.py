"""The drill's bookkeeping: downtime from gaps, split brain from probe order (no servers)."""

from __future__ import annotations

from videodb.cluster.drill import (
    DrillReport,
    DrillRun,
    _max_gap,
    _two_primaries,
    _unprotected_s,
)


def test_downtime_is_the_longest_gap_including_the_edges() -> None:
    assert _max_gap([1.0, 1.1, 1.2, 4.2, 4.3], 1.0, 4.5) == 3.0
    assert _max_gap([], 0.0, 2.5) == 2.5
    assert _max_gap([5.0], 0.0, 6.0) == 5.0


def test_handover_in_order_is_not_a_split_brain() -> None:
    probes = [("a", 1.0), ("a", 1.05), ("b", 3.0), ("b", 3.05)]
    assert _two_primaries(probes, old="a") is False


def test_old_master_acknowledging_after_the_new_one_is_a_split_brain() -> None:
    probes = [("a", 1.0), ("b", 3.0), ("a", 3.2), ("b", 3.3)]
    assert _two_primaries(probes, old="a") is True


def test_report_summary_and_verdict() -> None:
    def run(write: float, lost: int = 0, unprotected: float = 0.0) -> DrillRun:
        return DrillRun(
            "kill-postgres",
            "sync",
            "a",
            "a",
            write,
            0.5,
            100,
            lost,
            1,
            0,
            0,
            unprotected,
            False,
            True,
            3.0,
        )

    report = DrillReport("kill-postgres", [run(1.0), run(3.0, unprotected=2.5), run(2.0)])
    summary = report.as_dict()
    assert summary["write_downtime_s"] == {"median": 2.0, "worst": 3.0}
    assert summary["unprotected_s"] == {"median": 0.0, "worst": 2.5}
    assert summary["acknowledged"] == 300 and summary["lost_acknowledged"] == 0
    assert report.passed
    assert not DrillReport("kill-postgres", [run(1.0, lost=1)]).passed


def test_unprotected_time_runs_from_each_commit_acknowledged_without_a_sync_standby() -> None:
    # protected until 2.0, then two probe commits with no synchronous standby, then protected
    samples = [(1.0, False), (2.0, True), (2.5, True), (3.2, False), (3.3, False)]
    assert abs(_unprotected_s(samples) - 1.2) < 1e-9
    assert _unprotected_s([(1.0, False), (2.0, False)]) == 0.0
    assert _unprotected_s([]) == 0.0

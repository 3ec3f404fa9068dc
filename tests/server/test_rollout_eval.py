"""evaluate_rollout: the pure gate logic."""

from __future__ import annotations

from edgefleet.server.rollouts import DeviceOutcome, Gates, evaluate_rollout

GATES = Gates(min_committed_ratio=0.5, max_failure_ratio=0.25, max_p95_regression=1.5, soak_s=10.0)


def decide(outcomes: list[DeviceOutcome], *, wave: int = 0, waves: int = 3, healthy_since: float | None = None,
           auto_revert: bool = False, now: float = 100.0):  # type: ignore[no-untyped-def]
    return evaluate_rollout(current_wave=wave, wave_count=waves, gates=GATES, outcomes=outcomes,
                            healthy_since=healthy_since, auto_revert=auto_revert, now=now)


def test_waits_until_enough_devices_committed() -> None:
    d = decide([DeviceOutcome("committed"), DeviceOutcome("downloading"), DeviceOutcome("trial")])
    assert (d.action, d.healthy_since) == ("wait", None)


def test_soak_starts_when_the_ratio_is_met_and_then_advances() -> None:
    outcomes = [DeviceOutcome("committed"), DeviceOutcome("committed"), DeviceOutcome("trial")]
    first = decide(outcomes, now=100.0)
    assert (first.action, first.healthy_since) == ("wait", 100.0)
    assert decide(outcomes, healthy_since=100.0, now=109.9).action == "wait"
    assert decide(outcomes, healthy_since=100.0, now=110.0).action == "advance"
    assert decide(outcomes, wave=2, healthy_since=100.0, now=110.0).action == "complete"


def test_failure_ratio_breach_pauses_or_aborts() -> None:
    outcomes = [DeviceOutcome("committed"), DeviceOutcome("rolled_back"), DeviceOutcome("committed")]
    paused = decide(outcomes)
    assert paused.action == "pause"
    assert paused.reason == "wave 1: failure ratio 1/3 = 0.33 above 0.25"
    assert decide(outcomes, auto_revert=True).action == "abort"


def test_p95_figures_of_outcomes_alone_do_not_pause() -> None:
    # the p95 gate judges the cohorts' telemetry (tests/server/test_latency_gate.py), not a device's
    # p95 against the one it reported before under other load
    slow = [DeviceOutcome("committed", 10.0, 20.0), DeviceOutcome("committed", 10.0, 16.0),
            DeviceOutcome("committed", 10.0, 11.0)]
    assert decide(slow).action == "wait"


def test_superseded_and_pending_devices_are_not_counted() -> None:
    outcomes = [DeviceOutcome("committed"), DeviceOutcome("superseded"), DeviceOutcome("superseded"),
                DeviceOutcome("pending")]
    assert decide(outcomes, healthy_since=0.0).action == "advance"

"""The rollout's shadow gates (server/rollouts.py), pure: devices' shadow reports against the bounds."""

from __future__ import annotations

from edgefleet.server.db.models import Rollout
from edgefleet.server.rollouts import DeviceOutcome, Gates, evaluate_rollout, gates_of

FAILING = {"samples": 40, "agreement": 0.375, "latency_ms": {"p95": 1.5}, "passed": False,
           "reason": "agreement 0.375 < 0.900 over 40 inputs"}
PASSING = {"samples": 40, "agreement": 1.0, "latency_ms": {"p95": 1.5}, "passed": True, "reason": "ok"}


def decide(gates: Gates, *outcomes: DeviceOutcome) -> tuple[str, str | None]:
    decision = evaluate_rollout(current_wave=0, wave_count=2, gates=gates, outcomes=outcomes, healthy_since=None,
                                auto_revert=False, now=100.0)
    return decision.action, decision.reason


def test_disagreeing_device_pauses_with_the_shadow_reason() -> None:
    gates = Gates(soak_s=0, min_shadow_agreement=0.9, max_failure_ratio=0.5)
    action, reason = decide(gates, DeviceOutcome("rejected", shadow=FAILING, device_id="cam-1"),
                            DeviceOutcome("committed", shadow=PASSING, device_id="cam-2"))
    assert (action, reason) == ("pause", "wave 1: shadow agreement 0.375 on cam-1 below 0.900 (40 inputs)")


def test_latency_gate_and_passing_devices() -> None:
    slow = {**PASSING, "latency_ms": {"p95": 12.0}}
    assert decide(Gates(soak_s=0, max_shadow_p95_ms=10.0), DeviceOutcome("committed", shadow=slow, device_id="a")) \
        == ("pause", "wave 1: shadow p95 12.00 ms on a above 10.00 ms")
    assert decide(Gates(soak_s=0, min_shadow_agreement=0.9), DeviceOutcome("committed", shadow=PASSING)) \
        == ("advance", None)


def test_device_verdict_counts_without_a_gate_and_reports_in_progress_do_not() -> None:
    assert decide(Gates(soak_s=0), DeviceOutcome("rejected", shadow=FAILING, device_id="cam-1")) == (
        "pause", "wave 1: cam-1 held the candidate back: shadow: agreement 0.375 < 0.900 over 40 inputs")
    assert decide(Gates(soak_s=0, min_shadow_agreement=0.9), DeviceOutcome("assigned", shadow={"samples": 0})) \
        == ("wait", None)


def test_gates_default_to_the_rollouts_shadow_spec() -> None:
    rollout = Rollout(gates={"soak_s": 5.0}, shadow={"min_agreement": 0.8, "max_latency_ms": 20.0})
    assert gates_of(rollout) == Gates(soak_s=5.0, min_shadow_agreement=0.8, max_shadow_p95_ms=20.0)
    explicit = Rollout(gates={"min_shadow_agreement": 0.95}, shadow={"min_agreement": 0.8})
    assert gates_of(explicit).min_shadow_agreement == 0.95

"""Drift alarms with a stated false-alarm rate: healthy windows of any size almost never alarm, a
darkened camera does, and a profile made from synthetic inputs is scored without an alarm."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgefleet.agent.quality.drift import DriftMonitor, ReferenceProfile, build_reference_profile, summarize_fleet
from edgefleet.agent.quality.stats import chi2_quantile, psi_critical

SCORES = {"scores": np.array([[0.1, 0.7, 0.2]], np.float32)}


def scene(rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    """A smooth 48x64 "camera" frame: a lit gradient plus a blob, its lighting varying frame to frame."""
    y, x = np.mgrid[0:48, 0:64]
    light = rng.uniform(0.6, 1.0)
    cy, cx = rng.uniform(10, 38), rng.uniform(10, 54)
    image = 80 * light + 60 * (x / 64) + 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60.0)
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(image * gain, 0, 255).astype(np.uint8)


def profile(rng: np.random.Generator, n: int = 64, synthetic: bool = False) -> ReferenceProfile:
    made = build_reference_profile([scene(rng) for _ in range(n)], [SCORES] * n, "classification")
    return made.model_copy(update={"synthetic": synthetic})


def window_report(monitor: DriftMonitor, rng: np.random.Generator, n: int, gain: float = 1.0) -> dict[str, Any]:
    monitor.reset()
    for _ in range(n):
        monitor.observe(scene(rng, gain), SCORES)
    return monitor.report()


def test_chi2_quantiles() -> None:
    for dof, p, exact in ((9, 0.999, 27.877), (4, 0.99, 13.277), (2, 0.95, 5.991), (1, 0.999, 10.828)):
        assert chi2_quantile(p, dof) == pytest.approx(exact, rel=0.02)
    assert psi_critical(10, 1000, 10**9, 0.001) < psi_critical(10, 100, 10**9, 0.001) < psi_critical(10, 100, 64, 0.001)


def test_healthy_windows_do_not_alarm_where_the_fixed_threshold_does_and_darker_frames_do() -> None:
    rng = np.random.default_rng(18)
    reference = profile(rng)
    monitor = DriftMonitor(reference, window=400, min_samples=50)
    reports = [window_report(monitor, rng, 100) for _ in range(40)]
    old_rule = sum(r["max_psi"] > 0.25 for r in reports)
    assert sum(r["drifted"] for r in reports) == 0
    assert old_rule >= 5  # PSI over 100 frames against 64 reference frames is ~0.2 by chance alone
    dark = window_report(monitor, rng, 100, gain=0.5)
    assert dark["drifted"] and "input.brightness" in dark["drifted_stats"]
    assert dark["psi"]["input.brightness"] > dark["critical"]["input.brightness"] > 0.25


def test_a_synthetic_reference_is_scored_but_raises_no_alarm_unless_asked() -> None:
    rng = np.random.default_rng(5)
    reference = profile(rng, synthetic=True)
    quiet = window_report(DriftMonitor(reference, window=400, min_samples=50), rng, 100, gain=0.5)
    assert (quiet["drifted"], quiet["synthetic"], quiet["reason"]) == (False, True, "reference is synthetic")
    assert quiet["psi"]["input.brightness"] > quiet["critical"]["input.brightness"]  # scored all the same
    loud = window_report(DriftMonitor(reference, window=400, min_samples=50, alarm_on_synthetic=True), rng, 100, 0.5)
    assert loud["drifted"] and "reason" not in loud
    # the server's fleet summary keeps the device's verdict; a threshold override still skips synthetic references
    summary = summarize_fleet({"cam-01": quiet, "cam-02": loud})
    assert [d["device_id"] for d in summary["drifted_devices"]] == ["cam-02"]
    assert [d["device_id"] for d in summarize_fleet({"cam-01": quiet}, threshold=0.1)["drifted_devices"]] == []

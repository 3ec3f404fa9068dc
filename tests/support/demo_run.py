"""What a run of the demo (``edgefleet-demo --exit-when-done --drift cam-02``) must have shown and left behind."""

from __future__ import annotations

import json
from pathlib import Path


def assert_demo_ran_the_whole_loop(workdir: Path, out: str) -> None:
    """The rollout completed, every agent served v2 (installed as a delta), telemetry had no gaps, drift flagged
    the darkened camera only, and the human output reads as an operator expects."""
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rollout"]["state"] == "completed"
    assert summary["v2"] == {"kind": "same"}
    assert summary["outcome"] == {"outcome": "completed", "reason": summary["rollout"]["reason"], "rolled_back": {}}
    # every agent's local API answers from the rolled-out version
    assert summary["served_by_version"] == {"cam-01": 2, "cam-02": 2}
    for device_id, flow in summary["telemetry"].items():
        assert flow["telemetry"] >= 3, device_id
        assert flow["gaps"] == 0, device_id
        assert {"update.downloading", "update.verified", "update.installed", "update.committed"} <= set(
            flow["events"]), device_id
        # v1 came whole; v2 (a fine-tuned v1) as a bsdiff delta the rollout prepared
        assert flow["installed_via"] == {"v1": "full", "v2": "delta"}, device_id
    # drift: the reference is made from frames like the agents' own, so the healthy camera raises no alarm;
    # the darkened one (--drift cam-02) raises the only one
    drift = summary["drift"]
    assert drift["cam-01"]["ready"] and not drift["cam-01"]["drifted"], drift
    assert drift["cam-02"]["ready"] and drift["cam-02"]["drifted"] and drift["cam-02"]["synthetic"] is False, drift
    assert "drift: cam-01 ok, cam-02 DRIFTED (" in out and "; 1 alarm" in out
    assert "stopped: agents, server, broker" in out
    # human output: waves as percents or device counts (no Python reprs), 1-based waves, versions by device
    assert "classifier v1 in waves 100 %" in out and "classifier v2 in waves of 1, 2 devices" in out
    assert "[100.0]" not in out and "{'" not in out and "wave 0" not in out
    assert "local inference API answers: cam-01 v2, cam-02 v2" in out
    assert "installed v1 by full, v2 by delta" in out
    # --exit-when-done: no dashboard URL or CLI line for servers that are about to stop
    assert "dashboard:" not in out and "EDGEFLEET_ADMIN_TOKEN" not in out

"""Regression tests for findings of this suite that need no special rig (the others sit beside the test
that found them: test_disk_full.py, test_hostile_updates.py, test_hostile_server.py, test_fuzzed_models.py)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.ota.rig import Device, Traffic
from tests.reliability.support import FAST_TRIAL, Versions
from tests.support.server import RunningServer


def test_a_failed_target_is_retried_when_due_though_the_manifest_is_unchanged(server: RunningServer,
                                                                             tmp_path: Path) -> None:
    """Finding: after `failed` the server answers 304 (same ETag) to every poll, and the client only looked at
    200 answers, so `update.retry_failed_s` never came: a device stayed on the old model until the manifest
    changed (seen in test_disk_full.py: the disk had space again, the update never resumed)."""
    device = Device(server, tmp_path, "retry-01", trial=FAST_TRIAL, retry_failed_s=0.5)
    versions = Versions(server, tmp_path / "m", "retry")
    v1 = versions.push(seed=61)
    versions.roll_out(v1["version"], ["retry-01"])
    device.config.update.min_free_mb = 1e12  # no disk has this much: the download fails at once
    assert device.update() == "failed"
    device.config.update.min_free_mb = 0
    assert device.client.run_once().value == "failed"  # 304, and the retry is not due yet
    time.sleep(0.6)
    with Traffic(device.host):
        assert device.update() == "committed"
    assert device.host.meta is not None and device.host.meta.sha256 == v1["sha256"]

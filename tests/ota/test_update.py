"""Updates against the real update server: full, delta, rejections, trial rollback, full disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import requests

from edgefleet.agent.ota.http import Session
from tests.ota.helpers import (
    device_reports,
    image,
    make_batch_one_only,
    make_classifier,
    make_slow_classifier,
    push,
    roll_out,
    sha256,
)
from tests.ota.rig import Device, Traffic
from tests.support.models import reference_image_classifier
from tests.support.net import native_speed
from tests.support.server import RunningServer


def install_v1(server: RunningServer, tmp_path: Path, models: dict[str, Path], device_id: str, name: str,
               **update: object) -> tuple[Device, dict[str, object]]:
    device = Device(server, tmp_path, device_id, **update)
    v1 = push(server.url, server.admin(), name, models["v1"])
    roll_out(server.url, server.admin(), name, v1["version"], [device_id])
    with Traffic(device.host):
        assert device.update() == "committed"
    return device, v1


def test_full_update_then_a_delta_update(server: RunningServer, tmp_path: Path, models: dict[str, Path]) -> None:
    device, v1 = install_v1(server, tmp_path, models, "ota-full", "full")
    token = tmp_path / "ota-full" / "device-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600  # enrolled; the token persisted privately
    assert device.host.meta is not None and (device.host.meta.version, device.host.meta.sha256) == \
        (1, sha256(models["v1"]))
    outputs, _meta = device.host.infer({"image": image(2)})
    np.testing.assert_allclose(outputs["scores"], reference_image_classifier(image(2), seed=0), rtol=1e-5)
    assert device.client.slots.active_slot() == "slot-a"
    assert device.log.types() == ["update.downloading", "update.verified", "update.installed", "update.committed"]
    # v2, offered as a bsdiff4 delta against v1 (the rollout makes the patch its device will ask for)
    v2 = push(server.url, server.admin(), "full", models["v2"])
    rollout = roll_out(server.url, server.admin(), "full", v2["version"], ["ota-full"])
    made = requests.get(f"{server.url}/v1/deltas/{v1['sha256']}/{v2['sha256']}", headers=server.admin(), timeout=30)
    assert made.status_code == 200
    before = device.client.bytes_transferred
    with Traffic(device.host) as traffic:
        assert device.update() == "committed"
    assert device.client.bytes_transferred - before == len(made.content) < models["v2"].stat().st_size
    assert device.host.meta is not None and device.host.meta.version == 2
    np.testing.assert_allclose(traffic.outputs[2], reference_image_classifier(image(2), seed=1), rtol=1e-5)
    assert sum(traffic.failed.values()) == 0 and traffic.no_model == 0
    assert json.loads((tmp_path / "ota-full/models/active.json").read_text()) == {"active": "slot-b",
                                                                                  "previous": "slot-a"}
    assert device_reports(server.url, server.admin(), rollout["id"]) == {"ota-full": "committed"}
    assert [f.get("via") for t, f in device.log.events if t == "update.committed"] == ["full", "delta"]
    assert not list((tmp_path / "ota-full/update/partial").iterdir())  # cleaned up
    assert device.client.reports.pending() == []  # every report reached the server
    # the same desired state again is "up to date": nothing happens
    assert device.client.run_once().value == "committed" and len(device.log.events) == 8


def rejected(device: Device) -> str:
    reasons = [f["reason"] for t, f in device.log.events if t == "update.rejected"]
    assert reasons, device.log.types()
    return str(reasons[-1])


def test_tampered_artifact_rejected_old_model_serves(server: RunningServer, tmp_path: Path,
                                                     models: dict[str, Path]) -> None:
    device, _ = install_v1(server, tmp_path, models, "ota-tamper", "tamper")
    # a model no other test uploads: its stored artifact is corrupted on the server, and no delta exists
    v2 = push(server.url, server.admin(), "tamper", make_classifier(tmp_path / "t.onnx", seed=7))
    stored = server.workdir / "artifacts" / v2["sha256"][:2] / v2["sha256"]
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0xFF
    stored.chmod(0o644)
    stored.write_bytes(bytes(data))
    rollout = roll_out(server.url, server.admin(), "tamper", v2["version"], ["ota-tamper"])
    with Traffic(device.host) as traffic:
        assert device.update() == "rejected"
    assert "does not match the manifest's" in rejected(device)
    assert device.host.meta is not None and device.host.meta.version == 1 and set(traffic.served) == {1}
    assert device.client.slots.active_slot() == "slot-a"
    assert device_reports(server.url, server.admin(), rollout["id"]) == {"ota-tamper": "rejected"}


class Rewriter(Session):
    """A man in the middle on the device's link: rewrites the manifest body the real server sent."""

    def __init__(self, change: str) -> None:
        super().__init__()
        self.change = change

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        response = super().request(method, url, *args, **kwargs)
        if url.endswith("/manifest") and response.status_code == 200:
            body = response.json()
            if self.change == "version":
                body["manifest"]["model"]["version"] += 10
            response._content = json.dumps(body).encode()
        return response


def test_bad_signature_wrong_key_older_version_rejected(server: RunningServer, tmp_path: Path,
                                                        models: dict[str, Path]) -> None:
    device, _ = install_v1(server, tmp_path, models, "ota-sig", "sig")
    v2 = push(server.url, server.admin(), "sig", models["v2"])
    roll_out(server.url, server.admin(), "sig", v2["version"], ["ota-sig"])
    # 1. the manifest altered in transit: its signature no longer verifies
    from edgefleet.agent.ota.client import UpdateClient
    from tests.ota.helpers import ort_loader

    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=Rewriter("version"))
    assert device.update() == "rejected"
    assert rejected(device) == "manifest is not signed by a threshold of root version 1's manifest keys (0 valid, " \
                               "1 needed)"
    # 2. a device that pins another key
    other = tmp_path / "other.pub"
    from edgefleet.agent.signing import generate_private_key, public_key_pem

    other.write_bytes(public_key_pem(generate_private_key().public_key()))
    config = device.config.model_copy(update={"server": device.config.server.model_copy(
        update={"public_key": other})})
    device.client = UpdateClient(config, device.host, device.log, ort_loader)
    assert device.update() == "rejected" and "is not signed by a threshold" in rejected(device)
    assert device.host.meta is not None and device.host.meta.version == 1
    # 3. the real key: v2 installs; then a rollout back to v1 (not a revert) is an older version
    device.client = UpdateClient(device.config, device.host, device.log, ort_loader)
    with Traffic(device.host):
        assert device.update() == "committed"
    roll_out(server.url, server.admin(), "sig", 1, ["ota-sig"])
    assert device.update() == "rejected"
    assert rejected(device) == "version 1 is not higher than the running version 2"
    assert device.host.meta is not None and device.host.meta.version == 2


def test_expired_manifest_rejected(tmp_path: Path, models: dict[str, Path]) -> None:
    from tests.support.server import start_server

    short = start_server(tmp_path / "short", overrides={"manifest_ttl_s": 0.001})
    try:
        device = Device(short, tmp_path, "ota-exp")
        v1 = push(short.url, short.admin(), "exp", models["v1"])
        roll_out(short.url, short.admin(), "exp", v1["version"], ["ota-exp"])
        assert device.update() == "rejected"
        assert rejected(device).startswith("manifest expired at")
        assert device.host.meta is None and device.client.slots.active() is None
    finally:
        short.stop()


@native_speed
def test_slow_model_fails_the_trial_and_rolls_back(server: RunningServer, tmp_path: Path,
                                                   models: dict[str, Path]) -> None:
    device, _ = install_v1(server, tmp_path, models, "ota-slow", "slow")
    slow = push(server.url, server.admin(), "slow", make_slow_classifier(tmp_path / "slow.onnx", seed=1))
    rollout = roll_out(server.url, server.admin(), "slow", slow["version"], ["ota-slow"],
                       trial={"window_s": 2.0, "min_inferences": 8, "max_latency_ratio": 3.0})
    with Traffic(device.host) as traffic:
        assert device.update() == "rolled_back"
    reason = next(f["reason"] for t, f in device.log.events if t == "update.rolled_back")
    assert reason.startswith("latency is above x3.00 the previous model's: p95 ") and "CI x" in reason
    assert "; the previous model timed again beside it now: " in reason  # confirmed under the same load
    assert device.host.meta is not None and device.host.meta.version == 1
    assert device.client.slots.active_slot() == "slot-a"
    assert traffic.served[2] >= 8 and sum(traffic.failed.values()) == 0  # slow, never failing
    assert device_reports(server.url, server.admin(), rollout["id"]) == {"ota-slow": "rolled_back"}
    assert device.client.run_once().value == "rolled_back"  # the same target is not tried again


def test_model_that_errors_at_runtime_rolls_back(server: RunningServer, tmp_path: Path,
                                                 models: dict[str, Path]) -> None:
    device, _ = install_v1(server, tmp_path, models, "ota-err", "err")
    bad = push(server.url, server.admin(), "err", make_batch_one_only(tmp_path / "bad.onnx", seed=1))
    roll_out(server.url, server.admin(), "err", bad["version"], ["ota-err"])
    with Traffic(device.host, batch=2) as traffic:  # the probe's batch of 1 passes; live batches of 2 fail
        assert device.update() == "rolled_back"
    reason = next(f["reason"] for t, f in device.log.events if t == "update.rolled_back")
    assert reason.startswith("error rate 100.0% over")
    assert device.host.meta is not None and device.host.meta.version == 1 and traffic.served[1] > 0


def test_full_disk_is_a_clean_failure(server: RunningServer, tmp_path: Path, models: dict[str, Path]) -> None:
    device, _ = install_v1(server, tmp_path, models, "ota-disk", "disk")
    device.config.update.min_free_mb = 1e12  # more than any disk has
    v2 = push(server.url, server.admin(), "disk", models["v2"])
    roll_out(server.url, server.admin(), "disk", v2["version"], ["ota-disk"])
    assert device.update() == "failed"
    reason = next(f["reason"] for t, f in device.log.events if t == "update.failed")
    assert "MB free in" in reason and "reserve" in reason
    assert device.host.meta is not None and device.host.meta.version == 1



def test_worker_thread_check_update_command_and_queued_reports(server: RunningServer, tmp_path: Path,
                                                               models: dict[str, Path]) -> None:
    from edgefleet.agent.ota.serverapi import ReportQueue, ServerApi
    from edgefleet.agent.wire import Command, UpdateReport
    from tests.support.net import free_port, wait_until

    device = Device(server, tmp_path, "ota-cmd")
    device.config.server.poll_interval_s = 3600  # only the command can make it look now
    device.client.start()
    try:
        wait_until(lambda: device.client.cycles == 1, 10)  # first poll: no desired state yet (204)
        assert device.client.state.value == "idle" and device.client.last_error is None
        v1 = push(server.url, server.admin(), "cmd", models["v1"])
        roll_out(server.url, server.admin(), "cmd", v1["version"], ["ota-cmd"])
        with Traffic(device.host):
            answer = device.log.commands["check_update"](Command(id="c1", type="check_update"))
            assert answer == {"state": "idle", "queued": True}
            wait_until(lambda: device.client.state.value == "committed", timeout=30)
    finally:
        device.client.stop(timeout=5)
    assert device.host.meta is not None and device.host.meta.version == 1
    # reports survive a server outage on disk and go out in order later
    queue = ReportQueue(tmp_path / "queue")
    for state in ("downloading", "committed"):
        queue.put(UpdateReport(state=state, model="cmd", version=1, sha256=v1["sha256"]))
    down = ServerApi(f"http://127.0.0.1:{free_port()}", device.client.api().token, timeout_s=2)
    assert queue.flush(down, "ota-cmd") == 0 and len(queue.pending()) == 2
    assert queue.flush(device.client.api(), "ota-cmd") == 2 and queue.pending() == []

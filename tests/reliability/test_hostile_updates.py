"""Hostile update traffic for a device that serves v1: what tests/ota does not already cover.

A man in the middle (an ``agent.ota.http.Session`` on the device's link) or a tampered server store supplies:
an artifact larger or smaller than the manifest says, a manifest without its signature (or with an
empty one), a genuine manifest signed for another device, and a replay of an older genuine manifest.
Each is refused with a one-line reason, the state machine stays consistent, and v1 keeps serving with
its exact outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.agent.ota.client import UpdateClient
from edgefleet.agent.ota.http import Response, Session
from edgefleet.agent.wire import MANIFEST_MEDIA_TYPE
from tests.ota.helpers import image, ort_loader
from tests.ota.rig import Device, Traffic
from tests.reliability.support import FAST_TRIAL, Versions, check_state_files
from tests.support.models import reference_image_classifier
from tests.support.server import RunningServer

Rewrite = Callable[[str, requests.Response], None]


class Middle(Session):
    """Rewrites the real server's answers on their way to the device."""

    def __init__(self, rewrite: Rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        response = super().request(method, url, *args, **kwargs)
        if url.endswith("/manifest"):
            _ = response.content  # read the real answer (the agent streams it), so a rewrite replaces it whole
        self.rewrite(url, response)
        return response


def _v1_device(server: RunningServer, tmp_path: Path, device_id: str) -> tuple[Device, Versions]:
    device = Device(server, tmp_path, device_id, trial=FAST_TRIAL)
    versions = Versions(server, tmp_path / "models", f"h-{device_id}")
    v1 = versions.push(seed=0)
    versions.roll_out(v1["version"], [device_id])
    with Traffic(device.host):
        assert device.update() == "committed"
    return device, versions


def _still_v1(device: Device, state_dir: Path) -> None:
    assert device.host.meta is not None and device.host.meta.version == 1
    outputs, served = device.host.infer({"image": image(2)})
    assert served.version == 1
    np.testing.assert_allclose(outputs["scores"], reference_image_classifier(image(2), seed=0), rtol=1e-5)
    found = check_state_files(state_dir)
    assert found["active"] == "slot-a" and found["tmp_files"] == []
    assert not [p for p in (state_dir / "update" / "partial").glob("*")]  # nothing half-downloaded kept


def _reasons(device: Device, kind: str) -> list[str]:
    return [str(f.get("reason")) for t, f in device.log.events if t == kind]


def _store(server: RunningServer, sha: str) -> Path:
    path = server.workdir / "artifacts" / sha[:2] / sha
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_artifact_of_the_wrong_size_on_the_server(server: RunningServer, tmp_path: Path, change: str) -> None:
    device, versions = _v1_device(server, tmp_path, f"size-{change}")
    v2 = versions.push(seed=11 if change == "longer" else 12)  # its own bytes: the store is content-addressed
    stored = _store(server, v2["sha256"])
    data = stored.read_bytes()
    stored.write_bytes(data + b"\0" * 4096 if change == "longer" else data[: len(data) // 2])
    versions.roll_out(v2["version"], [device.config.device_id])
    with Traffic(device.host) as traffic:
        final = device.update(timeout=20)
    if change == "longer":
        assert final == "failed"
        assert _reasons(device, "update.failed")[-1] == f"server sent more than the manifest's {v2['size']} bytes"
    else:
        assert final in ("failed", "rejected")
        reason = (_reasons(device, "update.failed") + _reasons(device, "update.rejected"))[-1]
        assert f"manifest says {v2['size']}" in reason, reason
    assert set(traffic.served) == {1} and sum(traffic.failed.values()) == 0
    _still_v1(device, device.config.state_dir)


def test_artifact_bytes_changed_in_transit(server: RunningServer, tmp_path: Path) -> None:
    device, versions = _v1_device(server, tmp_path, "transit")
    v2 = versions.push(seed=13)

    def flip(url: str, response: Response) -> None:
        if "/v1/artifacts/" in url or "/v1/deltas/" in url:  # the patch too: deltas are on offer
            inner = response.iter_content

            def flipped(chunk_size: int = 64 * 1024) -> Any:
                for i, block in enumerate(inner(chunk_size)):
                    yield (bytes([block[0] ^ 0x01]) + block[1:]) if i == 0 else block

            response.iter_content = flipped  # type: ignore[method-assign,assignment]

    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=Middle(flip))
    versions.roll_out(v2["version"], [device.config.device_id])
    assert device.update() == "rejected"
    assert "does not match the manifest's" in _reasons(device, "update.rejected")[-1]
    _still_v1(device, device.config.state_dir)


@pytest.mark.parametrize("signatures", [None, [], "", 12345])
def test_manifest_without_a_usable_signature(server: RunningServer, tmp_path: Path, signatures: object) -> None:
    device, versions = _v1_device(server, tmp_path, f"nosig-{type(signatures).__name__}-{len(str(signatures))}")
    v2 = versions.push(seed=1)

    def strip(url: str, response: Response) -> None:
        if url.endswith("/manifest") and response.status_code == 200:
            body = response.json()
            if signatures is None:
                del body["signatures"]
            else:
                body["signatures"] = signatures
            response._content = json.dumps(body).encode()

    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=Middle(strip))
    versions.roll_out(v2["version"], [device.config.device_id])
    if isinstance(signatures, list) or signatures is None:  # parses as a SignedManifest, fails verification
        assert device.update() == "rejected"
        assert _reasons(device, "update.rejected")[-1] == "manifest carries no signature"
    else:  # not a SignedManifest at all: the answer is refused like a broken transfer, and nothing moves
        from edgefleet.agent.errors import TransportError

        with pytest.raises(TransportError, match="manifest is not a SignedManifest") as caught:
            device.client.run_once()
        # finding: the reason was pydantic's multi-line dump of the whole body; now one line naming the field
        assert str(caught.value) == "manifest is not a SignedManifest: signatures: Input should be a valid list"
        assert device.client.state.value == "committed"
    _still_v1(device, device.config.state_dir)


def test_genuine_manifest_of_another_device_is_refused(server: RunningServer, tmp_path: Path) -> None:
    device, versions = _v1_device(server, tmp_path, "victim")
    other = Device(server, tmp_path, "other-dev")
    v2 = versions.push(seed=1)
    versions.roll_out(v2["version"], ["other-dev"])
    stolen = requests.get(f"{server.url}/v1/devices/other-dev/manifest", timeout=5,
                          headers={"Authorization": f"Bearer {other.client.api().token}",
                                   "Accept": MANIFEST_MEDIA_TYPE})
    assert stolen.status_code == 200

    def swap(url: str, response: Response) -> None:
        if url.endswith("/victim/manifest"):
            response.status_code = 200
            response._content = stolen.content

    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=Middle(swap))
    assert device.client.run_once().value == "rejected"
    assert _reasons(device, "update.rejected")[-1] == "manifest is for device 'other-dev', not 'victim'"
    _still_v1(device, device.config.state_dir)


def test_replayed_older_manifest_is_refused(server: RunningServer, tmp_path: Path) -> None:
    device, versions = _v1_device(server, tmp_path, "replay")
    device_id = device.config.device_id
    v2 = versions.push(seed=1)
    versions.roll_out(v2["version"], [device_id])
    captured = requests.get(f"{server.url}/v1/devices/{device_id}/manifest", timeout=5,
                            headers={"Authorization": f"Bearer {device.client.api().token}",
                                     "Accept": MANIFEST_MEDIA_TYPE}).content
    assert json.loads(captured)["manifest"]["model"]["version"] == 2
    with Traffic(device.host):
        assert device.update() == "committed"
    v3 = versions.push(seed=2)
    versions.roll_out(v3["version"], [device_id])
    with Traffic(device.host):
        assert device.update() == "committed"
    assert device.host.meta is not None and device.host.meta.version == 3

    def replay(url: str, response: Response) -> None:
        if url.endswith("/manifest"):
            response.status_code = 200
            response._content = captured
            response.headers["ETag"] = '"replayed"'

    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=Middle(replay))
    assert device.client.run_once().value == "rejected"
    reason = _reasons(device, "update.rejected")[-1]
    assert reason.startswith("manifest generation ") and reason.endswith("): a replay"), reason
    assert device.host.meta.version == 3 and device.client.slots.active_info().meta.version == 3  # type: ignore[union-attr]


def make_unrunnable(path: Path) -> Path:
    """Valid ONNX that every runtime loads (the server's upload check passes) but that fails on any input:
    a Reshape of 3x32x32 values to 5x7."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.support.models import _save_onnx

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["scores"])], "unrunnable",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [5, 7])],
        [numpy_helper.from_array(np.array([5, 7], dtype=np.int64), "shape")])
    return _save_onnx(graph, path)


def test_a_model_the_server_accepts_but_that_cannot_run_fails_the_test_load(server: RunningServer,
                                                                            tmp_path: Path) -> None:
    device, versions = _v1_device(server, tmp_path, "unrunnable")
    bad = versions.push(seed=-1, path=make_unrunnable(tmp_path / "unrunnable.onnx"))
    versions.roll_out(bad["version"], [device.config.device_id])
    with Traffic(device.host) as traffic:
        assert device.update() == "failed"
    reason = _reasons(device, "update.failed")[-1]
    assert reason.startswith("test-load failed: ") and "\n" not in reason
    assert set(traffic.served) == {1} and sum(traffic.failed.values()) == 0
    _still_v1(device, device.config.state_dir)

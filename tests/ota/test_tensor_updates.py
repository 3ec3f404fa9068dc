"""Tensor deltas end to end: the real server makes them with a rollout and offers the smallest option; the real
update client rebuilds the exact bytes, and falls back to the full artifact when a delta is refused."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.agent.ota.client import UpdateClient
from tests.ota.helpers import image, ort_loader, push, roll_out
from tests.ota.rig import Device, Traffic
from tests.ota.tensormodels import fine_tuned, image_mlp_reference, image_mlp_weights, make_image_mlp
from tests.ota.test_download import Link
from tests.support.server import RunningServer

TRIAL = {"window_s": 0.2, "min_inferences": 3}


def _installed_v1(server: RunningServer, tmp_path: Path, name: str, weights: dict[str, np.ndarray],
                  session: Any = None) -> tuple[Device, dict[str, Any]]:
    device = Device(server, tmp_path, f"{name}-dev", trial=TRIAL)
    if session is not None:
        device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=session)
    v1 = push(server.url, server.admin(), name, make_image_mlp(tmp_path / f"{name}-v1.onnx", weights))
    roll_out(server.url, server.admin(), name, 1, [device.config.device_id])
    with Traffic(device.host):
        assert device.update() == "committed"
    return device, v1


def _manifest(server: RunningServer, device: Device) -> dict[str, Any]:
    api = device.client.api()
    response = requests.get(f"{server.url}/v1/devices/{device.config.device_id}/manifest", headers=api.auth,
                            timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json()["manifest"])


def _delta_rows(server: RunningServer, to_sha256: str) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(server.workdir / "edgefleet.db") as db:
        rows = db.execute("SELECT algorithm, sha256, size FROM deltas WHERE to_sha256 = ?", (to_sha256,)).fetchall()
    return {algorithm: (sha, size) for algorithm, sha, size in rows}


def _transfers(server: RunningServer, rollout_id: int) -> list[tuple[str, int, int]]:
    status = requests.get(f"{server.url}/v1/rollouts/{rollout_id}", headers=server.admin(), timeout=10).json()
    return [(t["option"], t["bytes"], t["devices"]) for t in status["transfers"]]


def _update_with_traffic(device: Device) -> Traffic:
    with Traffic(device.host) as traffic:
        assert device.update() == "committed"
    return traffic


def test_a_partial_fine_tune_travels_as_an_exact_tensor_delta(server: RunningServer, tmp_path: Path) -> None:
    weights = image_mlp_weights(1)
    device, v1 = _installed_v1(server, tmp_path, "td-partial", weights)
    tuned = fine_tuned(weights, 2, only=("w2",))  # 40 % of the float weights: no delta variant
    v2 = push(server.url, server.admin(), "td-partial", make_image_mlp(tmp_path / "v2.onnx", tuned))
    rollout = roll_out(server.url, server.admin(), "td-partial", 2, [device.config.device_id])
    rows = _delta_rows(server, v2["sha256"])
    assert set(rows) == {"bsdiff4", "tensor"}
    assert rows["tensor"][1] < 0.6 * rows["bsdiff4"][1]
    manifest = _manifest(server, device)
    assert manifest["artifact"]["sha256"] == v2["sha256"] and manifest["artifact"]["variant"] == "reference"
    assert manifest["delta"]["algorithm"] == "tensor"
    assert manifest["delta"]["url"].endswith(f"/v1/deltas/{v1['sha256']}/{v2['sha256']}?algorithm=tensor")
    assert _transfers(server, rollout["id"]) == [("tensor", rows["tensor"][1], 1)]
    before = device.client.bytes_transferred
    _update_with_traffic(device)
    assert device.client.bytes_transferred - before == rows["tensor"][1]
    assert device.host.meta is not None and device.host.meta.sha256 == v2["sha256"]
    outputs, _ = device.host.infer({"image": image(2)})
    np.testing.assert_allclose(outputs["scores"], image_mlp_reference(tuned, image(2)), rtol=1e-4, atol=1e-6)
    assert _transfers(server, rollout["id"]) == [("installed", 0, 1)]


def test_a_full_fine_tune_ships_a_validated_delta_q8_variant(server: RunningServer, tmp_path: Path) -> None:
    weights = image_mlp_weights(3)
    device, v1 = _installed_v1(server, tmp_path, "td-q8", weights)
    tuned = fine_tuned(weights, 4)
    v2 = push(server.url, server.admin(), "td-q8", make_image_mlp(tmp_path / "v2.onnx", tuned))
    roll_out(server.url, server.admin(), "td-q8", 2, [device.config.device_id])
    variants = requests.get(f"{server.url}/v1/models/td-q8/versions/2/variants", headers=server.admin(),
                            timeout=10).json()
    q8 = next(v for v in variants["variants"] if v["name"].startswith("delta-q8"))
    assert q8["name"] == f"delta-q8@{v1['sha256'][:12]}" and q8["status"] == "ready", q8["report"]
    assert q8["report"]["validation"]["passed"] and q8["report"]["base_sha256"] == v1["sha256"]
    exact = _delta_rows(server, v2["sha256"])
    lossy = _delta_rows(server, q8["sha256"])
    assert set(lossy) == {"tensor"} and lossy["tensor"][1] < 0.3 * exact["bsdiff4"][1]
    chosen = {(d["to_variant"], d["algorithm"]): d for d in variants["deltas"]}
    assert chosen[(q8["name"], "tensor")]["chosen"] and not chosen[("reference", "tensor")]["chosen"]
    manifest = _manifest(server, device)
    assert manifest["artifact"]["variant"] == q8["name"] and manifest["artifact"]["sha256"] == q8["sha256"]
    assert manifest["model"]["version"] == 2 and manifest["delta"]["algorithm"] == "tensor"
    before = device.client.bytes_transferred
    _update_with_traffic(device)
    assert device.client.bytes_transferred - before == lossy["tensor"][1]
    assert device.host.meta is not None and device.host.meta.sha256 == q8["sha256"]
    outputs, _ = device.host.infer({"image": image(4)})
    reference = image_mlp_reference(tuned, image(4))
    assert (outputs["scores"].argmax(1) == reference.argmax(1)).all()
    np.testing.assert_allclose(outputs["scores"], reference, atol=1e-3)
    assert _manifest(server, device)["artifact"]["sha256"] == q8["sha256"]  # it stays on the variant: no re-download
    assert device.update() == "committed"
    assert device.client.bytes_transferred - before == lossy["tensor"][1]


def test_a_tensor_delta_corrupted_in_transit_falls_back_to_the_full_artifact(server: RunningServer,
                                                                            tmp_path: Path) -> None:
    weights = image_mlp_weights(5)
    link = Link(corrupt_deltas=True)
    device, _v1 = _installed_v1(server, tmp_path, "td-bad", weights, session=link)
    v2 = push(server.url, server.admin(), "td-bad",
              make_image_mlp(tmp_path / "v2.onnx", fine_tuned(weights, 6, only=("w2",))))
    roll_out(server.url, server.admin(), "td-bad", 2, [device.config.device_id])
    delta = _manifest(server, device)["delta"]
    assert delta["algorithm"] == "tensor"
    link.log.clear()
    _update_with_traffic(device)
    assert [kind for kind, _, _ in link.log] == ["delta", "artifact"]
    assert device.host.meta is not None and device.host.meta.sha256 == v2["sha256"]
    assert [f.get("via") for t, f in device.log.events if t == "update.committed"][-1] == "full"


def test_a_tensor_delta_in_an_unknown_format_version_is_refused(server: RunningServer, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A newer server's format: the patch verifies (its sha256 is the manifest's) but this agent cannot read it."""
    weights = image_mlp_weights(7)
    device, v1 = _installed_v1(server, tmp_path, "td-v2", weights)
    v2 = push(server.url, server.admin(), "td-v2",
              make_image_mlp(tmp_path / "v2.onnx", fine_tuned(weights, 8, only=("w2",))))
    roll_out(server.url, server.admin(), "td-v2", 2, [device.config.device_id])  # makes the patches it wants
    made = requests.get(f"{server.url}/v1/deltas/{v1['sha256']}/{v2['sha256']}?algorithm=tensor",
                        headers=server.admin(), timeout=60)
    assert made.status_code == 200
    newer = bytearray(made.content)
    struct.pack_into("<H", newer, 4, 2)
    sha = hashlib.sha256(newer).hexdigest()
    stored = server.workdir / "artifacts" / sha[:2] / sha
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(bytes(newer))
    with sqlite3.connect(server.workdir / "edgefleet.db") as db:
        db.execute("UPDATE deltas SET sha256 = ? WHERE to_sha256 = ? AND algorithm = 'tensor'", (sha, v2["sha256"]))
        db.execute("UPDATE counters SET value = value + 1 WHERE name = 'registry'")
    assert _manifest(server, device)["delta"]["sha256"] == sha
    before = device.client.bytes_transferred
    with caplog.at_level(logging.WARNING, logger="agent.ota.client"):
        _update_with_traffic(device)
    refusals = [r.getMessage() for r in caplog.records if "format version 2" in r.getMessage()]
    assert refusals == ["delta failed (tensor delta format version 2 is not supported (this agent reads version 1))"
                        "; fetching the full artifact"]
    assert device.client.bytes_transferred - before == len(newer) + v2["size"]
    assert device.host.meta is not None and device.host.meta.sha256 == v2["sha256"]

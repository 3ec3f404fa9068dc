"""Variants made by the real pipeline (server.optimize) in a background job, then chosen per device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support.net import wait_until
from tests.support.server import RunningServer


def job_done(server: RunningServer, job_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job = requests.get(f"{server.url}/v1/jobs/{job_id}", headers=server.admin(), timeout=5).json()
        return job if job["state"] in ("succeeded", "failed") else None

    return dict(wait_until(finished, timeout=60, interval=0.2))  # type: ignore[arg-type]


def test_variants_job_publishes_and_manifests_pick_by_class(server: RunningServer,
                                                            onnx_files: tuple[Path, Path]) -> None:
    pushed = requests.post(f"{server.url}/v1/models/var/versions", headers=server.admin(), timeout=30,
                           files={"file": ("a.onnx", onnx_files[0].read_bytes())}).json()
    base = f"{server.url}/v1/models/var/versions/1/variants"
    bad = requests.post(base, headers=server.admin(), json={"target": "toaster"}, timeout=10)
    assert bad.status_code == 202
    failed = job_done(server, bad.json()["id"])
    assert failed["state"] == "failed" and "unknown target 'toaster'" in failed["message"]
    listed = requests.get(base, headers=server.admin(), timeout=5).json()["variants"]
    assert [v["name"] for v in listed] == ["reference"]  # a failed job publishes nothing

    accepted = requests.post(base, headers=server.admin(), json={"target": "cpu-int8"}, timeout=10)
    assert accepted.status_code == 202 and accepted.json()["state"] in ("queued", "running")
    job = job_done(server, accepted.json()["id"])
    assert job["state"] == "succeeded", job
    variants = {v["name"]: v for v in requests.get(base, headers=server.admin(), timeout=5).json()["variants"]}
    assert set(variants) == {"reference", "cpu-int8-static", "cpu-int8-dynamic"}
    for name in ("cpu-int8-static", "cpu-int8-dynamic"):
        v = variants[name]
        assert v["status"] in ("ready", "rejected") and v["report"]
        assert (v["sha256"] is not None) == (v["status"] == "ready")
    ready = [n for n in ("cpu-int8-static", "cpu-int8-dynamic") if variants[n]["status"] == "ready"]

    onnx_dev = server.enroll("var-onnx", device_class="rpi4", hw={"runtimes": ["onnxruntime"]})
    tflite_dev = server.enroll("var-tflite", device_class="rpi4", hw={"runtimes": ["litert"]})
    requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "var", "version": 1, "target": {"device_ids": ["var-onnx", "var-tflite"]}, "waves": [100],
        "gates": {"soak_s": 3600}}).raise_for_status()

    def artifact(device: str, token: str) -> dict[str, Any]:
        return dict(requests.get(f"{server.url}/v1/devices/{device}/manifest", timeout=5,
                                 headers={"Authorization": f"Bearer {token}"}).json()["manifest"]["artifact"])

    expected = ready[0] if ready else "reference"  # rpi4 prefers cpu-int8 (static first, see conftest)
    got = artifact("var-onnx", onnx_dev)
    assert got["variant"] == expected and got["sha256"] == variants[expected]["sha256"]
    assert artifact("var-tflite", tflite_dev)["sha256"] == pushed["sha256"]  # no runnable variant: the reference


def test_select_variant_follows_class_preferences_and_runtimes() -> None:
    from edgefleet.server.db.models import Variant
    from edgefleet.server.manifests import select_variant

    def v(name: str, fmt: str, status: str = "ready") -> Variant:
        return Variant(name=name, format=fmt, status=status, sha256=name[0] * 64, size=1)

    rows = [v("reference", "onnx"), v("cpu-int8-static", "onnx", "rejected"), v("cpu-int8-dynamic", "onnx"),
            v("edgetpu", "tflite")]
    prefs = ["edgetpu", "cpu-int8-static", "cpu-int8-dynamic"]
    assert select_variant(rows, preferences=prefs, formats={"tflite", "onnx"}).name == "edgetpu"
    assert select_variant(rows, preferences=prefs, formats={"onnx"}).name == "cpu-int8-dynamic"
    assert select_variant(rows, preferences=prefs, formats=None).name == "edgetpu"
    assert select_variant(rows, preferences=prefs, formats={"torchscript"}).name == "reference"
    assert select_variant(rows, preferences=[], formats={"onnx"}).name == "reference"

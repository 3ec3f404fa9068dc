"""Model quality end to end: the real server, a real Mosquitto, real agents (the daemon's ``Agent``
in-process, ONNX Runtime, image-folder sources).

(a) a candidate that disagrees with the serving model is held back by the shadow gate (the device
    rejects it and keeps serving v1; the rollout pauses with the reason); an agreeing one commits;
(b) a device whose inputs get darker is flagged in the API, an unchanged one is not.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import requests

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.main import Agent
from edgefleet.server.dashboard.render import drift_flag
from tests.quality.support import scene
from tests.support.broker import Mosquitto
from tests.support.models import make_onnx_image_classifier
from tests.support.net import SLOWDOWN, wait_until
from tests.support.server import RunningServer, start_server

SIZE = 64
PREPROCESS = {"scale": 1 / 255, "color": "RGB", "layout": "NCHW"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Mosquitto]]:
    workdir = tmp_path_factory.mktemp("wired")
    broker = Mosquitto(workdir).start()
    server = start_server(workdir, mqtt_port=broker.port, overrides={"telemetry": {"batch_interval_s": 0.05}})
    try:
        yield server, broker
    finally:
        server.stop()
        broker.stop()


def frames(count: int, seed: int, darken: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        frame = scene(rng, SIZE, SIZE)
        if darken != 1.0:
            frame = np.clip(frame.astype(np.float32) * darken, 0, 255).astype(np.uint8)
        out.append(frame)
    return out


def tensors(images: list[np.ndarray]) -> np.ndarray:
    """The daemon's pre-processing for PREPROCESS (the frames are already SIZE x SIZE)."""
    rgb = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in images]).astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))


class Feeder:
    """New frames into the folder source every 0.3 s until stopped: the shadow needs live traffic while it runs,
    whenever the device gets to it (a fixed batch can be served in full before the candidate is loaded)."""

    def __init__(self, folder: Path, seed: int, prefix: str, batch: int = 40) -> None:
        self.folder, self.seed, self.prefix, self.batch = folder, seed, prefix, batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        round_ = 0
        while not self._stop.is_set():
            write_images(self.folder, frames(self.batch, seed=self.seed + round_), f"{self.prefix}{round_:03d}")
            round_ += 1
            self._stop.wait(0.3)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def write_images(folder: Path, images: list[np.ndarray], prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - 5  # settled: the source takes files older than 0.2 s
    for index, image in enumerate(images):
        path = folder / f"{prefix}-{index:04d}.png"
        cv2.imwrite(str(path), image)
        os.utime(path, (old + index * 1e-3, old + index * 1e-3))


def relabel(source: Path, target: Path, tag: str) -> Path:
    """Same weights, different bytes (a re-export): a new sha256 that answers exactly like ``source``."""
    model = onnx.load(str(source))
    model.doc_string = tag
    onnx.save(model, str(target))
    return target


def upload(server: RunningServer, name: str, path: Path, calibration: np.ndarray | None = None) -> dict[str, Any]:
    import json

    files: dict[str, Any] = {"file": (path.name, path.read_bytes()),
                             "meta": (None, json.dumps({"task": "classification", "preprocess": PREPROCESS}))}
    if calibration is not None:
        buffer = io.BytesIO()
        np.savez(buffer, image=calibration)
        files["calibration"] = ("cal.npz", buffer.getvalue())
    response = requests.post(f"{server.url}/v1/models/{name}/versions", headers=server.admin(), files=files,
                             timeout=60 * SLOWDOWN)
    assert response.status_code == 201, response.text
    return dict(response.json())


def rollout(server: RunningServer, name: str, version: int, devices: list[str], **extra: Any) -> int:
    body = {"model": name, "version": version, "target": {"device_ids": devices}, "waves": [100],
            "gates": {"soak_s": 0, "min_committed_ratio": 1.0, "max_p95_regression": None},
            "trial": {"window_s": 0.5, "min_inferences": 3, "max_latency_ratio": None}, **extra}
    response = requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def get(server: RunningServer, path: str) -> Any:
    response = requests.get(server.url + path, headers=server.admin(), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def agent(server: RunningServer, broker: Mosquitto, tmp: Path, device_id: str, folder: Path,
          model: Path | None = None, samples: bool = False) -> Agent:
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "device_id": device_id, "state_dir": str(tmp / device_id),
        "api": {"listen": None},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2},
        "telemetry": {"interval_s": 0.5},
        "runtime": {"threads": 1, "autotune": False},
        "source": {"kind": "images", "uri": str(folder), "fps": 200},
        "server": {"url": server.url, "enrollment_token": server.enrollment_token,
                   "public_key": str(server.public_key_path), "poll_interval_s": 0.3, "timeout_s": 10,
                   "device_class": "test-cpu"},
        "update": {"min_free_mb": 0, "retry_backoff_s": 0.1, "warmup_runs": 1, "retry_failed_s": 3600},
        "quality": {"drift": {"every": 1, "window": 200, "min_samples": 60},
                    "shadow": {"timeout_s": 30, "threads": 2},
                    "samples": {"enabled": samples, "per_hour": 900, "max_count": 10}},
    }
    if model is not None:
        settings["model"] = {"path": str(model), "name": "cls", "version": 1, "task": "classification",
                             "preprocess": PREPROCESS}
    running = Agent(AgentConfig.model_validate(settings))
    running.start()

    def enrolled() -> bool:
        response = requests.get(f"{server.url}/v1/devices/{device_id}", headers=server.admin(), timeout=10)
        return response.status_code == 200 and response.json()["enrolled_at"] is not None

    wait_until(enrolled, timeout=15)
    return running


def test_disagreeing_candidate_is_held_back_and_agreeing_one_commits(
        rig: tuple[RunningServer, Mosquitto], tmp_path: Path) -> None:
    server, broker = rig
    v1 = make_onnx_image_classifier(tmp_path / "v1.onnx", size=SIZE, seed=0)
    rival = make_onnx_image_classifier(tmp_path / "rival.onnx", size=SIZE, seed=1)
    twin = relabel(v1, tmp_path / "twin.onnx", "re-exported")
    for path in (v1, rival, twin):
        upload(server, "shadowed", path)  # versions 1, 2, 3
    folder = tmp_path / "frames"
    device = agent(server, broker, tmp_path, "shadow-dev", folder, model=v1)
    assert device.updater is not None
    opened: list[tuple[int | None, int]] = []  # (threads asked for, threads the runtime took) per candidate load
    load = device.updater.loader

    def recording_load(path: Path, meta: Any, *, threads: int | None = None) -> Any:
        model = load(path, meta, threads=threads)
        opened.append((threads, model.threads))
        return model

    device.updater.loader = recording_load
    try:
        shadow = {"sample_fraction": 1.0, "cpu_budget_pct": 100, "min_samples": 30, "min_agreement": 0.9}
        first = rollout(server, "shadowed", 2, ["shadow-dev"], shadow=shadow)
        with Feeder(folder, 3000, "a"):
            wait_until(lambda: get(server, f"/v1/rollouts/{first}")["state"] != "running", timeout=60)
        held = get(server, f"/v1/rollouts/{first}")
        assert held["state"] == "paused", held
        assert held["reason"].startswith("wave 1: shadow agreement ") and "on shadow-dev below 0.900" in held["reason"]
        row = held["devices"][0]
        assert row["state"] == "rejected" and row["reason"].startswith("shadow: agreement ")
        assert row["shadow"]["passed"] is False and row["shadow"]["agreement"] < 0.9
        assert row["shadow"]["samples"] >= 30
        served = device.host.meta
        assert served is not None and served.version == 1  # the old model keeps serving
        assert device.updater is not None and device.updater.slots.active_slot() is None  # no slot switched

        requests.post(f"{server.url}/v1/rollouts/{first}/abort", headers=server.admin(), json={}, timeout=10)
        second = rollout(server, "shadowed", 3, ["shadow-dev"], shadow=shadow)
        with Feeder(folder, 4000, "b"):
            wait_until(lambda: get(server, f"/v1/rollouts/{second}")["state"] != "running", timeout=60)
        passed = get(server, f"/v1/rollouts/{second}")
        assert passed["state"] == "completed", (passed.get("reason"), passed["devices"])
        row = passed["devices"][0]
        assert row["state"] == "committed" and row["shadow"]["passed"] is True
        assert row["shadow"]["agreement"] == 1.0
        served = device.host.meta
        assert served is not None and served.version == 3
        # each candidate: the serving instance with the runtime's threads, the shadowed one with shadow.threads
        assert opened == [(None, 1), (2, 2)] * 2
        assert device.host.model is not None and device.host.model.threads == 1
    finally:
        device.stop()
        device.close()


def test_darker_inputs_are_flagged_unchanged_are_not(rig: tuple[RunningServer, Mosquitto], tmp_path: Path) -> None:
    server, broker = rig
    images = frames(120, seed=7)
    v1 = make_onnx_image_classifier(tmp_path / "v1.onnx", size=SIZE, seed=0)
    version = upload(server, "drifty", v1, calibration=tensors(images))
    assert version["drift_profile"]["source"] == "calibration" and version["drift_profile"]["samples"] == 120
    assert "input.brightness" in version["drift_profile"]["stats"]
    same, dark = tmp_path / "same", tmp_path / "dark"
    devices = [agent(server, broker, tmp_path, "drift-same", same, samples=True),
               agent(server, broker, tmp_path, "drift-dark", dark)]
    try:
        rollout_id = rollout(server, "drifty", version["version"], ["drift-same", "drift-dark"])
        wait_until(lambda: get(server, f"/v1/rollouts/{rollout_id}")["state"] == "completed", timeout=40)
        write_images(same, images, "s")
        write_images(dark, [np.clip(f.astype(np.float32) * 0.45, 0, 255).astype(np.uint8) for f in images], "d")

        def flags() -> dict[str, Any]:
            return {d["device_id"]: d["drift"] for d in get(server, "/v1/devices")["devices"]
                    if d["device_id"].startswith("drift-")}

        wait_until(lambda: all(f and f["ready"] and f["samples"] == 120 for f in flags().values()), timeout=30)
        found = flags()
        assert found["drift-dark"]["drifted"] is True and found["drift-dark"]["max_psi"] > 1.0
        assert found["drift-same"]["drifted"] is False and found["drift-same"]["max_psi"] < 0.05
        assert get(server, "/v1/devices/drift-dark")["drift"]["drifted"] is True
        summary = get(server, f"/v1/models/drifty/versions/{version['version']}/drift")
        assert summary["flagged"] is True and summary["ready"] == 2 and summary["drifted"] == 1
        assert [d["device_id"] for d in summary["drifted_devices"]] == ["drift-dark"]
        assert summary["profile"]["source"] == "calibration"
        newest = get(server, "/v1/devices/drift-dark/telemetry?limit=1")["telemetry"][0]
        section = newest["payload"]["drift"]
        assert section["every"] == 1 and 0 < section["cost_us_per_frame"] < 5000 * SLOWDOWN  # the drift cost
        flagged, text = drift_flag(section)  # what the dashboard shows
        assert flagged is True and text.startswith(found["drift-dark"]["max_stat"] + " ")

        # ground truth: samples stay on the device until asked for; the operator labels them
        assert get(server, "/v1/samples?device_id=drift-same")["samples"] == []
        assert devices[0].quality is not None
        kept = devices[0].quality.store
        assert kept is not None and len(kept) == 10  # the newest max_count are kept
        sent = requests.post(f"{server.url}/v1/devices/drift-same/commands", headers=server.admin(),
                             json={"type": "upload_samples"}, timeout=10)
        assert sent.status_code == 202, sent.text
        wait_until(lambda: len(get(server, "/v1/samples?device_id=drift-same")["samples"]) == 10, timeout=15)
        wait_until(lambda: len(kept) == 0, timeout=5)  # uploaded samples leave the device
        listed = get(server, "/v1/samples?device_id=drift-same")["samples"]
        assert {s["version"] for s in listed} == {version["version"]} and all(s["prediction"] for s in listed)
        image = requests.get(f"{server.url}/v1/samples/drift-same/{listed[0]['id']}/image", headers=server.admin(),
                             timeout=10)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        truth = [{"device_id": "drift-same", "id": s["id"],
                  "label": s["prediction"]["class"] if i < 7 else (s["prediction"]["class"] + 1) % 4}
                 for i, s in enumerate(listed)]
        labelled = requests.post(f"{server.url}/v1/samples/labels", headers=server.admin(), json={"labels": truth},
                                 timeout=10)
        assert labelled.status_code == 200 and labelled.json() == {"labelled": 10, "cleared": 0}
        scores = get(server, "/v1/quality/accuracy?model=drifty")
        assert scores["overall"] == {"n": 10, "correct": 7, "accuracy": 0.7}
        assert scores["by_version"][f"drifty@{version['version']}"]["accuracy"] == 0.7
        assert scores["by_device_class"]["test-cpu"]["n"] == 10
    finally:
        for running in devices:
            running.stop()
            running.close()


def test_local_api_requests_feed_drift(tmp_path: Path) -> None:
    """Images sent to the local API are watched for drift like a source's frames (no server, no broker)."""
    from edgefleet.agent.quality import build_reference_profile
    from edgefleet.agent.runtime.base import LoadOptions
    from edgefleet.agent.runtime.onnx import load
    from tests.support.net import free_port

    images = frames(120, seed=7)
    path = make_onnx_image_classifier(tmp_path / "v1.onnx", size=SIZE, seed=0)
    model = load(path, LoadOptions(threads=1, providers=("CPUExecutionProvider",)))
    name = model.inputs[0].name
    outputs = [model.infer({name: batch[None]}) for batch in tensors(images)]
    model.close()
    profile = build_reference_profile(images, outputs, "classification", model="cls", version=1)
    (tmp_path / "profile.json").write_text(profile.model_dump_json())
    listen = f"127.0.0.1:{free_port()}"
    running = Agent(AgentConfig.model_validate({
        "device_id": "api-drift", "state_dir": str(tmp_path / "state"), "mqtt": {"enabled": False},
        "api": {"listen": listen}, "runtime": {"threads": 1, "autotune": False},
        "model": {"path": str(path), "name": "cls", "version": 1, "task": "classification",
                  "preprocess": PREPROCESS},
        "quality": {"drift": {"every": 1, "window": 200, "min_samples": 60,
                              "profile": str(tmp_path / "profile.json")}}}))
    running.start()
    try:
        with requests.Session() as http:
            for image in images:
                dark = np.clip(image.astype(np.float32) * 0.45, 0, 255).astype(np.uint8)
                response = http.post(f"http://{listen}/v1/infer", data=cv2.imencode(".png", dark)[1].tobytes(),
                                     headers={"Content-Type": "image/png"}, timeout=10)
                assert response.status_code == 200, response.text
            tensor_body = {"inputs": {name: tensors(images[:1]).tolist()}}
            assert http.post(f"http://{listen}/v1/infer", json=tensor_body, timeout=10).status_code == 200
        assert running.quality is not None
        report = running.quality.drift_report()
        assert report is not None and report["observed"] == 121  # 120 images, 1 tensor request (outputs only)
        assert report["ready"] and report["drifted"] is True and report["max_psi"] > 1.0
    finally:
        running.stop()

"""Every install a user is told to make works in a fresh virtual environment, and its program starts.

The wheel is built from this checkout once a session (tests/install/conftest.py); each test makes a
new venv, installs one set of extras from the package registry (pip's cache makes it quick) and runs
the installed console script, never this checkout's code:

- the device set with one runtime (``[device,onnx]``, ``[device,litert]``): no OpenCV; the daemon
  serves JSON requests, answers an image request with a one-line 415 that names ``[camera]``;
- ``[server]``: no OpenCV; the server starts and computes a drift profile from calibration inputs;
- ``[demo]``: the whole demo loop on the pure-Python broker it brings (amqtt), checked as the README's demo
  (tests/support/demo_run.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.support.demo_run import assert_demo_ran_the_whole_loop
from tests.support.models import make_onnx_image_classifier, make_tflite_float
from tests.support.net import free_port, wait_until

pytestmark = [pytest.mark.install, pytest.mark.slow, pytest.mark.timeout(900)]


class Venv:
    def __init__(self, root: Path) -> None:
        self.root = root
        # the host's PYTHONPATH must not lend this checkout's code to the installed programs
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def install(self, wheel: Path, extras: str) -> None:
        requirement = f"edgefleet[{extras}] @ {wheel.as_uri()}"
        # --no-compile: no .pyc for every file of every dependency up front (CPU time, nothing the test checks);
        # the programs compile what they import when they run
        done = subprocess.run([self.bin("python"), "-m", "pip", "install", "-q", "--no-compile", requirement],
                              capture_output=True, text=True, env=self.env, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr

    def has(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([self.bin("python"), "-c", code], env=self.env).returncode == 0

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as handle:
            return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=self.root,
                                    env={**self.env, **(env or {})})


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def mapped(proc: subprocess.Popen[bytes], needle: str) -> bool:
    return needle in Path(f"/proc/{proc.pid}/maps").read_text()


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Venv]:
    yield Venv(tmp_path / "venv")


@pytest.mark.parametrize("runtime", ["onnx", "litert"])
def test_device_with_one_runtime_serves_without_opencv(wheel: Path, venv: Venv, tmp_path: Path, runtime: str) -> None:
    venv.install(wheel, f"device,{runtime}")
    assert not venv.has("cv2") and not venv.has("torch") and not venv.has("fastapi")
    assert venv.has("onnxruntime") == (runtime == "onnx") and venv.has("ai_edge_litert") == (runtime == "litert")
    if runtime == "onnx":
        model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
        feeds = {"image": np.zeros((1, 3, 32, 32), np.float32).tolist()}
    else:
        model = make_tflite_float(tmp_path / "float.tflite")
        feeds = {"a": [[1.0, 2.0, 3.0, 4.0]], "b": [[0.5, 0.5, 0.5, 0.5]]}
    listen = f"127.0.0.1:{free_port()}"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "fresh-venv", "state_dir": str(tmp_path / "state"), "model": {"path": str(model)},
        "source": {"kind": "none"}, "api": {"listen": listen}, "mqtt": {"enabled": False}, "server": {"url": None}}))
    log = tmp_path / "agent.log"
    proc = venv.start([venv.bin("edgefleet-agent"), "run", "--config", str(config)], log)
    try:
        wait_until(lambda: " ready: " in log.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        answer = requests.post(f"http://{listen}/v1/infer", json={"inputs": feeds}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]
        image = requests.post(f"http://{listen}/v1/infer", data=b"\x89PNG\r\n\x1a\n....",
                              headers={"Content-Type": "image/png"}, timeout=10)
        assert image.status_code == 415
        error = image.json()["error"]
        assert "\n" not in error and "OpenCV" in error and "pip install 'edgefleet[camera]'" in error, error
        assert not mapped(proc, "cv2")
        assert stop(proc) == 0, log.read_text()
    finally:
        stop(proc)


def test_server_starts_and_profiles_calibration_without_opencv(wheel: Path, venv: Venv, tmp_path: Path) -> None:
    venv.install(wheel, "server")
    assert not venv.has("cv2") and not venv.has("amqtt") and not venv.has("torch")
    port = free_port()
    work = tmp_path / "server"
    done = subprocess.run([venv.bin("edgefleet-server"), "init", "--dir", str(work), "--listen", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, env=venv.env, timeout=120)
    assert done.returncode == 0, done.stderr
    config_path = work / "server.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["mqtt"]["enabled"] = False
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "server.log"
    proc = venv.start([venv.bin("edgefleet-server"), "run", "--config", str(config_path)], log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None

    try:
        wait_until(healthy, timeout=60)
        assert proc.poll() is None, log.read_text()
        model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
        calibration = tmp_path / "calibration.npz"
        np.savez(calibration, image=np.random.default_rng(0).uniform(0, 1, (16, 3, 32, 32)).astype(np.float32))
        operator = {"EDGEFLEET_URL": url, "EDGEFLEET_ADMIN_TOKEN": config["admin_token"]}
        pushed = subprocess.run([venv.bin("edgefleet"), "model", "push", "classifier", str(model), "--json",
                                 "--task", "classification", "--calibration", str(calibration)],
                                capture_output=True, text=True, env={**venv.env, **operator}, timeout=120)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        document = json.loads(pushed.stdout)
        version = document.get("version") or document["model"]["version"]
        profile = requests.get(f"{url}/v1/models/classifier/versions/{version}/profile",
                               headers={"Authorization": f"Bearer {config['admin_token']}"}, timeout=10)
        assert profile.status_code == 200, profile.text
        assert "input.brightness" in json.dumps(profile.json())  # the drift profile of the calibration images
        assert not mapped(proc, "cv2")
        assert stop(proc) in (0, -signal.SIGTERM), log.read_text()
    finally:
        stop(proc)


def test_demo_runs_the_whole_loop_from_the_installed_package(wheel: Path, venv: Venv, tmp_path: Path) -> None:
    """The README's first command, shortened, as ``pip install 'edgefleet[demo]'`` gives it: the pure-Python broker
    it brings, the server, two agents, v1 then v2 in gated waves, a darkened camera flagged by drift."""
    venv.install(wheel, "demo")
    assert venv.has("amqtt") and venv.has("cv2") and venv.has("fastapi")
    workdir = tmp_path / "demo"
    proc = subprocess.run([venv.bin("edgefleet-demo"), "--agents", "2", "--soak", "2", "--broker", "amqtt",
                           "--workdir", str(workdir), "--exit-when-done", "--drift", "cam-02"],
                          capture_output=True, text=True, timeout=600, cwd=venv.root, env=venv.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_demo_ran_the_whole_loop(workdir, proc.stdout)

"""The daemon as a real subprocess, its config, and the helpers the daemon tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
import yaml

from tests.support.models import reference_image_classifier
from tests.support.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["cat", "dog", "fox", "owl"]


def agent_command(config: Path) -> list[str]:
    """``edgefleet-agent run`` once agent/cli.py exists, else the daemon module itself."""
    script = Path(sys.executable).parent / "edgefleet-agent"
    if (ROOT / "agent" / "cli.py").exists() and script.exists():
        return [str(script), "run", "--config", str(config)]
    return [sys.executable, "-m", "edgefleet.agent.daemon.main", "--config", str(config)]


def base_config(tmp: Path, model: Path | None, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": "test-dev",
        "state_dir": str(tmp / "state"),
        "mqtt": {"enabled": False},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "log_level": "DEBUG",
    }
    if model is not None:
        config["model"] = {"path": str(model), "task": "classification", "labels": LABELS, "version": 3}
    config.update(sections)
    return config


class AgentProc:
    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config = config
        self.config_path = tmp / "agent.yaml"
        self.listen = (config.get("api") or {}).get("listen")  # where the API stays until a restart
        self.write_config(config)
        self.log_path = tmp / "agent.log"
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, wait_ready: bool = True) -> AgentProc:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(agent_command(self.config_path), cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        if wait_ready:
            proc = self.proc
            wait_until(lambda: " ready: " in self.log() or proc.poll() is not None, timeout=30)
            assert proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if hasattr(self, "_log"):
            self._log.close()

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=10)

    def post(self, path: str, data: bytes, content_type: str) -> requests.Response:
        return requests.post(self.url + path, data=data, headers={"Content-Type": content_type}, timeout=20)


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def expected_scores(bgr: np.ndarray) -> np.ndarray:
    """What the classifier gives for a 32x32 BGR frame under the default float pre-processing."""
    rgb = bgr[:, :, ::-1].astype(np.float64) / 255.0
    return reference_image_classifier(rgb.transpose(2, 0, 1)[None].astype(np.float32))[0]


def solid(color: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), color, dtype=np.uint8)


def pattern(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> list[np.ndarray]:
    """An MJPG .avi; returns the frames as OpenCV decodes them (what the daemon will see)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame)
    cap.release()
    assert len(decoded) == len(frames)
    return decoded

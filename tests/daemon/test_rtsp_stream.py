"""The daemon on a real IP-camera stream: an RTSP server (GStreamer) at 10 fps, ``source.fps: 10``.

A camera that delivers exactly the configured rate must not be thinned by the source's pacing
(frames arrive a hair early or late), and the stream must come back after the camera restarts.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.support import AgentProc, base_config, read_results
from tests.support.models import make_onnx_image_classifier
from tests.support.net import free_port, wait_until

CAMERA = Path(__file__).resolve().parents[1] / "support" / "rtsp_camera.py"
SYSTEM_PYTHON = "/usr/bin/python3"
FPS = 10
WINDOW_S = 10.0


def _gstreamer_missing() -> str | None:
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('jpegenc') and Gst.ElementFactory.find('rtpjpegpay')")
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip().splitlines()[-1]


class Camera:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> Camera:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(CAMERA), str(self.port), str(FPS)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        assert line == "ready", line
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def camera() -> Iterator[Camera]:
    why = _gstreamer_missing()
    if why:
        pytest.skip(f"no GStreamer RTSP server for {SYSTEM_PYTHON} (apt-get install gir1.2-gst-rtsp-server-1.0 "
                    f"gstreamer1.0-plugins-good python3-gi): {why}")
    cam = Camera(free_port()).start()
    try:
        yield cam
    finally:
        cam.stop()


def rate_over(results: Path, seconds: float) -> float:
    """Inferences per second on frames captured during the next ``seconds``."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    stamps = [r["ts"] for r in read_results(results)]
    return sum(start <= ts < end for ts in stamps) / (end - start)


def test_rtsp_camera_at_its_rate_and_after_a_restart(tmp_path: Path, camera: Camera) -> None:
    model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
    results = tmp_path / "results.jsonl"
    config = base_config(tmp_path, model, source={"kind": "stream", "uri": camera.uri, "fps": FPS,
                                                   "reconnect_max_s": 1.0},
                         results={"file": str(results)}, api={"listen": None}, log_level="INFO")
    agent = AgentProc(tmp_path, config).start()
    try:
        wait_until(lambda: len(read_results(results)) >= 20, timeout=30)  # connected, buffers drained
        first = rate_over(results, WINDOW_S)
        assert first >= 0.95 * FPS, f"{first:.2f} inferences/s from a {FPS} fps camera with fps: {FPS}"

        camera.stop()  # the camera reboots: the stream stalls, then the connection is refused
        wait_until(lambda: "source stream failed" in agent.log(), timeout=30)
        seen = len(read_results(results))
        camera.start()
        wait_until(lambda: len(read_results(results)) >= seen + 20, timeout=60)
        assert agent.proc is not None and agent.proc.poll() is None
        second = rate_over(results, WINDOW_S)
        assert second >= 0.95 * FPS, f"{second:.2f} inferences/s after the camera restarted"
        code, took = agent.terminate()
        assert code == 0 and took < 5.0
    finally:
        agent.kill()

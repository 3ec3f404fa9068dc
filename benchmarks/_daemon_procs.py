"""Memory and start-up of the daemon against the bare runtime, each in a process of its own.

- bare: ``python`` that imports numpy and onnxruntime, creates the session on the same model with the
  same threads and runs it a few times; start-up is ``Popen`` to its "loaded" line.
- bare video: the same, and it also decodes the daemon's video file with OpenCV and runs the model on every
  frame (resized to the input): what a video source costs by itself, OpenCV's libraries and decoder included,
  so the daemon on a video is compared with both.
- daemon: ``edgefleet-agent run`` with the config a device has (local API on, MQTT to a real broker
  when Mosquitto is installed, an update server URL and a device token), ``source: none`` or a video file; start-up
  is ``Popen`` to ``READY=1`` on its NOTIFY_SOCKET. RSS is VmRSS once it has settled.
"""

from __future__ import annotations

import compileall
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.support.broker import MOSQUITTO, Mosquitto
from tests.support.net import free_port

AGENT = Path(sys.executable).with_name("edgefleet-agent")
BARE = """
import os, sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.zeros([d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape],
                                              np.float32)}
for _ in range(20):
    session.run(None, feed)
print("loaded", flush=True)
sys.stdin.read()
"""
BARE_VIDEO = BARE.replace('print("loaded", flush=True)', """
import threading
import cv2
def decode():
    name = session.get_inputs()[0].name
    shape = session.get_inputs()[0].shape
    while True:
        capture = cv2.VideoCapture(sys.argv[3])
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(cv2.resize(frame, (shape[3], shape[2])), cv2.COLOR_BGR2RGB)
            session.run(None, {name: np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)})
        capture.release()
threading.Thread(target=decode, daemon=True).start()
print("loaded", flush=True)""")


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used: start-up work that, unlike wall time, a busy machine does not
    stretch (on a shared box the wall-clock ratio says more about the neighbours than about the daemon)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_rss(pid: int, settle_s: float) -> float:
    """The median of a few VmRSS samples after ``settle_s``."""
    time.sleep(settle_s)
    samples = []
    for _ in range(5):
        samples.append(vm_rss_mb(pid))
        time.sleep(0.2)
    return statistics.median(samples)


Figures = tuple[float, float, float]  # start-up wall s, start-up CPU s, settled RSS MB


def bare_process(model: Path, threads: int, settle_s: float, video: Path | None = None) -> Figures:
    """Start-up and RSS of the bare runtime holding ``model`` (and running it on ``video``'s frames)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    script, extra = (BARE, []) if video is None else (BARE_VIDEO, [str(video)])
    proc = subprocess.Popen([sys.executable, "-c", script, str(model), str(threads), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        took, cpu = time.perf_counter() - start, cpu_s(proc.pid)
        if line.strip() != b"loaded":
            raise RuntimeError(f"the bare runtime did not load the model: {line!r}")
        return took, cpu, settled_rss(proc.pid, settle_s)
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def broker(work: Path) -> Iterator[int | None]:
    """A Mosquitto on a free port when it is installed (the agent then keeps a live MQTT session)."""
    if not (shutil.which("mosquitto") or Path(MOSQUITTO).exists()):
        yield None
        return
    running = Mosquitto(work).start()
    try:
        yield running.port
    finally:
        running.stop()


def write_video(path: Path, size: int, frames: int = 60) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (size, size))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    writer.release()
    return path


def daemon_process(model: Path, work: Path, threads: int, source: dict[str, Any], mqtt_port: int | None,
                   settle_s: float) -> Figures:
    """Start-up to READY and RSS of ``edgefleet-agent run`` serving ``model``."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    config = {
        "device_id": "bench", "state_dir": str(state),
        "model": {"path": str(model), "task": "classification"},
        "runtime": {"prefer": "onnxruntime", "threads": threads, "autotune": False},
        "source": source, "api": {"listen": f"127.0.0.1:{free_port()}"},
        "mqtt": {"enabled": mqtt_port is not None, "host": "127.0.0.1", "port": mqtt_port or 1883},
        # a device token, as an enrolled device holds: MQTT connects (paho, ssl) and the update client polls
        # (requests, urllib3); without one neither would ever reach the network in this run
        "server": {"url": f"http://127.0.0.1:{free_port()}", "poll_interval_s": 60, "token": "bench-device-token"},
        "log_level": "WARNING",
    }
    config_path = state / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = state / "notify.sock"
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NOTIFY_SOCKET"] = str(notify_path)
    start = time.perf_counter()
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify.settimeout(60)
        while b"READY=1" not in notify.recv(4096).split(b"\n"):
            pass
        took, cpu = time.perf_counter() - start, cpu_s(proc.pid)
        return took, cpu, settled_rss(proc.pid, settle_s)
    finally:
        notify.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(model: Path, size: int, threads: int, *, runs: int = 3, settle_s: float = 3.0) -> dict[str, Any]:
    """Bare, daemon with ``source: none`` and daemon on a video file: median start-up and RSS of ``runs``."""
    work = Path(tempfile.mkdtemp(prefix="edgefleet-procs-"))
    video = write_video(work / "clip.avi", size)
    # byte-code as an installed wheel has it (pip compiles on install; a checkout run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile the agent's modules at every start, which the bare process never does)
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "edgefleet"), quiet=1)
    figures: dict[str, list[Figures]] = {"bare": [], "bare_video": [], "none": [], "video": []}
    with broker(work) as mqtt_port:
        for _ in range(runs):  # interleaved, so all four see the same load on the machine
            figures["bare"].append(bare_process(model, threads, settle_s))
            figures["bare_video"].append(bare_process(model, threads, settle_s, video))
            figures["none"].append(daemon_process(model, work, threads, {"kind": "none"}, mqtt_port, settle_s))
            figures["video"].append(daemon_process(model, work, threads, {"kind": "video", "uri": str(video),
                                                                          "fps": 30}, mqtt_port, settle_s))
    shutil.rmtree(work, ignore_errors=True)
    median = {name: tuple(statistics.median(row[i] for row in rows) for i in range(3))
              for name, rows in figures.items()}
    bare_s, bare_cpu, bare_mb = median["bare"]
    return {
        "mqtt_broker": mqtt_port is not None,
        "bare_startup_s": round(bare_s, 3), "bare_rss_mb": round(bare_mb, 1),
        "daemon_startup_s": round(median["none"][0], 3), "startup_ratio": round(median["none"][0] / bare_s, 3),
        "bare_startup_cpu_s": round(bare_cpu, 3), "daemon_startup_cpu_s": round(median["none"][1], 3),
        "startup_cpu_ratio": round(median["none"][1] / bare_cpu, 3),
        "daemon_rss_mb": round(median["none"][2], 1), "rss_ratio_none": round(median["none"][2] / bare_mb, 3),
        "daemon_video_rss_mb": round(median["video"][2], 1),
        "rss_ratio_video": round(median["video"][2] / bare_mb, 3),
        "bare_video_rss_mb": round(median["bare_video"][2], 1),
        "rss_ratio_video_to_bare_video": round(median["video"][2] / median["bare_video"][2], 3),
        "runs": runs,
    }

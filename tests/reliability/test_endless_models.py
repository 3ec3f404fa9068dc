"""Finding 8: an uploaded model that loops for ever (an ONNX ``Loop`` with M = 10^15) hung a server thread
in inspect_model / compute_profile, and SIGTERM no longer stopped the server.

Uploads are now inspected and profiled in a bounded child process (server/sandbox.py), as variant builds
and bsdiff are: the model is refused with a 422 and the reason within 60 s, the server answers others in
< 2 s meanwhile, and SIGTERM stops it within 10 s, also while a child is still running.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.support.models import make_onnx_endless_loop, make_onnx_image_classifier
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server


class Poller:
    """GET /healthz and an operator route every 0.2 s from another thread; keeps the slowest answer."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.worst = 0.0
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for path in ("/healthz", "/v1/models"):
                started = time.perf_counter()
                try:
                    got = requests.get(self.srv.url + path, headers=self.srv.admin(), timeout=10)
                    if got.status_code != 200:
                        self.failures.append(f"{path}: {got.status_code}")
                except requests.RequestException as exc:
                    self.failures.append(f"{path}: {exc}")
                self.worst = max(self.worst, time.perf_counter() - started)
                self.count += 1

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def upload(srv: RunningServer, name: str, path: Path, out: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        got = requests.post(f"{srv.url}/v1/models/{name}/versions", headers=srv.admin(), timeout=120,
                            files={"file": (path.name, path.read_bytes())})
        out.update(status=got.status_code, body=got.json())
    except requests.RequestException as exc:
        out.update(status=0, body={"detail": str(exc)})
    out["seconds"] = time.monotonic() - started


def stop_seconds(srv: RunningServer) -> float:
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(timeout=30)
    return time.monotonic() - started


def test_an_endless_model_is_refused_within_60s_while_the_server_serves(tmp_path: Path) -> None:
    srv = start_server(tmp_path)  # the default sandbox limits
    try:
        fine = make_onnx_image_classifier(tmp_path / "fine.onnx")
        out: dict[str, Any] = {}
        upload(srv, "fine", fine, out)
        assert out["status"] == 201, out  # a real model still goes through the child
        assert out["body"]["inputs"][0]["name"] == "image"
        endless = make_onnx_endless_loop(tmp_path / "endless.onnx")
        with Poller(srv) as poller:
            upload(srv, "endless", endless, out)
        print(f"endless model: {out['status']} after {out['seconds']:.1f}s ({out['body']['detail']}); "
              f"{poller.count} other requests meanwhile, slowest {poller.worst * 1000:.0f} ms")
        assert out["status"] == 422 and out["seconds"] < 60
        # Whichever bound trips first on this machine: the wall clock or the child's CPU rlimit (both 45 s).
        assert out["body"]["detail"] in ("model refused: loading and running it once did not finish within 45s",
                                         "model refused: loading and running it once used more than 45s of CPU time")
        assert poller.failures == [] and poller.count > 20 and poller.worst < 2.0
        listed = requests.get(f"{srv.url}/v1/models", headers=srv.admin(), timeout=10).json()["models"]
        assert [m["name"] for m in listed] == ["fine"]  # nothing of the endless one was kept
    finally:
        if srv.proc.poll() is None:
            seconds = stop_seconds(srv)
            print(f"SIGTERM afterwards: stopped in {seconds:.1f}s")
            assert seconds < 10 and srv.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal


def test_sigterm_while_a_model_is_being_inspected_stops_the_server_within_10s(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    endless = make_onnx_endless_loop(tmp_path / "endless.onnx")
    out: dict[str, Any] = {}
    uploader = threading.Thread(target=upload, args=(srv, "endless", endless, out), daemon=True)
    uploader.start()
    server = psutil.Process(srv.proc.pid)

    def inspecting() -> list[psutil.Process]:
        return [child for child in server.children(recursive=True) if "server.sandbox_child" in " ".join(
            child.cmdline())]

    children = wait_until(inspecting, timeout=30)
    assert isinstance(children, list)
    seconds = stop_seconds(srv)
    uploader.join(timeout=30)
    print(f"SIGTERM during an inspection: stopped in {seconds:.1f}s; the upload got {out.get('status')}")
    assert seconds < 10
    assert out["status"] == 503 and "shutting down" in out["body"]["detail"]  # told, not cut off
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


def test_a_variants_job_is_bounded_too(tmp_path: Path) -> None:
    """The variant pipeline runs the model many times: in a child bounded by sandbox.variants_timeout_s."""
    srv = start_server(tmp_path, overrides={"sandbox": {"variants_timeout_s": 0.05}})
    try:
        model = make_onnx_image_classifier(tmp_path / "m.onnx")
        out: dict[str, Any] = {}
        upload(srv, "m", model, out)
        assert out["status"] == 201, out
        started = requests.post(f"{srv.url}/v1/models/m/versions/1/variants", headers=srv.admin(), timeout=10,
                                json={"target": "cpu"})
        assert started.status_code == 202

        def finished() -> dict[str, Any] | None:
            job = requests.get(f"{srv.url}/v1/jobs/{started.json()['id']}", headers=srv.admin(), timeout=5).json()
            return job if job["state"] in ("succeeded", "failed") else None

        job = wait_until(finished, timeout=30, interval=0.2)
        assert isinstance(job, dict) and job["state"] == "failed", job
        assert "variant pipeline" in job["message"] and ("within 0.05s" in job["message"] or "CPU" in job["message"])
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
    finally:
        srv.stop()

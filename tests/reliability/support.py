"""What the reliability tests share: a real ``edgefleet-agent run`` process against the real server and
Mosquitto, an on-disk state checker, model versions on the server, and a TCP proxy that can throttle,
stall or cut the bytes between the agent and the server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml

from tests.support.broker import Mosquitto
from tests.support.models import make_onnx_image_classifier, reference_image_classifier
from tests.support.net import free_port, wait_until
from tests.support.server import RunningServer, start_server

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("idle", "committed", "rolled_back", "rejected", "failed")
FAST_TRIAL = {"window_s": 0.3, "min_inferences": 3, "max_error_rate": 0.5, "max_latency_ratio": 1000.0}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def probe_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


class Versions:
    """Model versions pushed to the server: ``seed`` makes a classifier whose exact outputs are known."""

    def __init__(self, server: RunningServer, workdir: Path, name: str) -> None:
        self.server = server
        self.workdir = workdir
        self.name = name
        self.by_version: dict[int, dict[str, Any]] = {}  # version -> {sha256, seed, size, path}
        workdir.mkdir(parents=True, exist_ok=True)

    def push(self, seed: int, path: Path | None = None) -> dict[str, Any]:
        model = path or make_onnx_image_classifier(self.workdir / f"{self.name}-{seed}.onnx", seed=seed)
        response = requests.post(f"{self.server.url}/v1/models/{self.name}/versions", headers=self.server.admin(),
                                 files={"file": (model.name, model.read_bytes())}, timeout=30)
        assert response.status_code == 201, response.text
        doc = response.json()
        entry = {"version": doc["version"], "sha256": doc["sha256"], "seed": seed, "size": model.stat().st_size,
                 "path": model}
        self.by_version[doc["version"]] = entry
        return entry

    def by_sha(self, sha: str) -> dict[str, Any] | None:
        return next((v for v in self.by_version.values() if v["sha256"] == sha), None)

    def roll_out(self, version: int, device_ids: list[str], trial: dict[str, Any] | None = None) -> int:
        body = {"model": self.name, "version": version, "target": {"device_ids": device_ids}, "waves": [100],
                "gates": {"soak_s": 0}, "trial": trial or FAST_TRIAL}
        response = requests.post(f"{self.server.url}/v1/rollouts", headers=self.server.admin(), json=body, timeout=10)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])


def agent_yaml(state_dir: Path, device_id: str, *, server: RunningServer | None, mqtt_port: int | None,
               api_port: int, server_url: str | None = None, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": device_id, "state_dir": str(state_dir), "log_level": "INFO",
        "runtime": {"prefer": "onnxruntime", "threads": 1, "autotune": False},
        "source": {"kind": "synthetic", "uri": "32x32", "fps": 40},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "mqtt": ({"enabled": True, "host": "127.0.0.1", "port": mqtt_port, "reconnect_min_s": 0.1,
                  "reconnect_max_s": 0.5, "connect_timeout_s": 2.0} if mqtt_port else {"enabled": False}),
        "telemetry": {"interval_s": 0.5},
        "update": {"min_free_mb": 0, "retry_backoff_s": 0.1, "warmup_runs": 1, "stall_timeout_s": 2.0,
                   "probe_timeout_s": 60},
    }
    if server is not None:
        config["server"] = {"url": server_url or server.url, "enrollment_token": server.enrollment_token,
                            "public_key": str(server.public_key_path), "poll_interval_s": 0.2, "timeout_s": 3,
                            "device_class": "x86-cpu"}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config

LOG_TAIL = 6000  # characters of the agent log printed when a test around it fails


class DaemonAgent:
    """``edgefleet-agent run --config FILE`` as a real subprocess; ``kill9()`` is the power cut."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.state_dir = Path(config["state_dir"])
        self.url = f"http://{config['api']['listen']}"
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> DaemonAgent:
        script = Path(sys.executable).parent / "edgefleet-agent"
        env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_TEST_CRASH_AT"}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen([str(script), "run", "--config", str(self.config_path)], cwd=REPO,
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the agent (and whatever child it has, e.g. the test-load): a power cut."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> DaemonAgent:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Stop the agent; when the block failed, print the tail of its log first (pytest shows it)."""
        if kind is not None:
            print(self.log()[-LOG_TAIL:])
        self.stop()

    def infer(self, seed: int = 0, timeout: float = 5.0) -> requests.Response:
        body = json.dumps({"inputs": {"image": probe_image(seed).tolist()}}).encode()
        return requests.post(self.url + "/v1/infer", data=body, headers={"Content-Type": "application/json"},
                             timeout=timeout)

    def wait_serving(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until /v1/infer answers 200; return its body."""
        found: dict[str, Any] = {}

        def answered() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                reply = self.infer()
            except requests.RequestException:
                return False
            if reply.status_code == 200:
                found.update(reply.json())
                return True
            return False

        wait_until(answered, timeout=timeout, interval=0.05)
        return found

    def wait_enrolled(self, timeout: float = 30.0) -> None:
        wait_until(lambda: (self.state_dir / "device-token").exists() or not self.alive(), timeout=timeout)
        assert self.alive(), self.log()[-3000:]

    def update_state(self) -> str | None:
        path = self.state_dir / "update" / "state.json"
        try:
            return str(json.loads(path.read_text())["state"])
        except (OSError, ValueError, KeyError):
            return None

    def wait_terminal(self, timeout: float = 30.0) -> str:
        wait_until(lambda: self.update_state() in TERMINAL, timeout=timeout)
        return str(self.update_state())


def check_state_files(state_dir: Path) -> dict[str, Any]:
    """The on-disk invariants after a power cut; returns what it found, raises AssertionError otherwise.

    state.json parses (or is absent: nothing saved yet); active.json parses and names a slot whose
    meta.json parses and whose file has the size and sha256 the meta records.
    """
    found: dict[str, Any] = {"state": None, "active": None, "sha256": None}
    state_path = state_dir / "update" / "state.json"
    if state_path.exists():
        record = json.loads(state_path.read_text())  # a torn file would raise here
        assert isinstance(record, dict) and isinstance(record.get("state"), str), record
        found["state"] = record["state"]
    pointer = state_dir / "models" / "active.json"
    if pointer.exists():
        doc = json.loads(pointer.read_text())
        slot = doc["active"]
        assert slot in ("slot-a", "slot-b"), doc
        meta = json.loads((state_dir / "models" / slot / "meta.json").read_text())
        model = state_dir / "models" / slot / meta["file"]
        assert model.stat().st_size == meta["size"], (slot, meta)
        actual = sha256_file(model)
        assert actual == meta["sha256"], f"{slot}: file {actual} vs meta {meta['sha256']}"
        found.update(active=slot, sha256=actual)
    leftovers = [p.name for p in (state_dir / "models").glob("*/.*.tmp")] if (state_dir / "models").exists() else []
    found["tmp_files"] = leftovers
    return found


def assert_exact_outputs(body: dict[str, Any], seed: int) -> None:
    expected = reference_image_classifier(probe_image(0), seed=seed)
    np.testing.assert_allclose(np.asarray(body["outputs"]["scores"], dtype=np.float32), expected,
                               rtol=1e-4, atol=1e-6)


# --- a TCP proxy between the agent and the server ---------------------------------------------------


class Proxy:
    """A loopback TCP proxy to ``target_port``. Modes (change at any time):

    - ``"pass"``: copy bytes both ways;
    - ``"drip"``: server->client bytes at ``drip_bps`` bytes per second, in small pieces;
    - ``"stall"``: server->client bytes stop once ``stall_after`` bytes of a response went through
      (the connection stays open, nothing more is sent);
    - ``"refuse"``: new connections are closed at once.
    Counts the bytes that went server->client in ``downstream``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.drip_bps = 20_000
        self.stall_after = 0
        self.downstream = 0
        self.connections = 0
        self.ranges: list[str] = []  # the Range header of each artifact or delta request that went through
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "refuse":
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        sent = 0
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if not down:
                    head = data.decode("latin-1", "replace")
                    first_line = head.split("\r\n", 1)[0]
                    if "/v1/artifacts/" in first_line or "/v1/deltas/" in first_line:
                        found = [line.split(":", 1)[1].strip() for line in head.split("\r\n")
                                 if line.lower().startswith("range:")]
                        self.ranges.append(found[0] if found else "")
                    dst.sendall(data)
                    continue
                while data and not self._stop.is_set():
                    if self.mode == "stall" and sent >= self.stall_after:
                        time.sleep(0.05)  # hold the connection open, send nothing
                        continue
                    piece = data
                    if self.mode == "stall":
                        piece = data[: self.stall_after - sent]
                    elif self.mode == "drip":
                        piece = data[: max(1, self.drip_bps // 20)]
                    dst.sendall(piece)
                    sent += len(piece)
                    self.downstream += len(piece)
                    data = data[len(piece):]
                    if self.mode == "drip":
                        time.sleep(0.05)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every open connection (bytes already buffered inside the proxy are lost, as on a real link)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


def api_port() -> int:
    return free_port()


def restart_server(server: RunningServer, timeout: float = 30.0) -> None:
    """Start the same server again (same config, database, keys and port) after ``server.stop()``."""
    server.stop()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with server.log_path.open("ab") as log:
        server.proc = subprocess.Popen([sys.executable, "-m", "edgefleet.server.cli", "run", "--config",
                                        str(server.config_path)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       env=env)

    def up() -> bool:
        assert server.proc.poll() is None, server.log()[-2000:]
        try:
            return requests.get(server.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(up, timeout=timeout, interval=0.1)


@contextmanager
def broker_server_behind_proxy(base: Path) -> Iterator[tuple[Mosquitto, RunningServer, Proxy]]:
    """A persistent Mosquitto and the real server, with devices reaching the server through a Proxy
    (``public_url``), so a test can slow, stall or cut downloads."""
    (base / "broker").mkdir()
    broker = Mosquitto(base / "broker", persistence=True).start()
    proxy = Proxy(0)
    server = start_server(base, mqtt_port=broker.port, overrides={"public_url": proxy.url})
    proxy.target_port = int(server.url.rsplit(":", 1)[1])
    try:
        yield broker, server, proxy
    finally:
        server.stop()
        proxy.close()
        broker.stop()

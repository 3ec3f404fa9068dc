"""A device under test: ModelHost + UpdateClient on a real ONNX Runtime, with traffic and an event log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.ota.client import UpdateClient
from tests.ota.helpers import image, ort_loader
from tests.support.server import RunningServer


class EventLog:
    """Stands in for agent.telemetry.Telemetry's two methods the client calls; records what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.commands: dict[str, Any] = {}

    def event(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, fields))

    def on_command(self, name: str, handler: Any) -> None:
        self.commands[name] = handler

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


def agent_config(server: RunningServer, state_dir: Path, device_id: str, **update: Any) -> AgentConfig:
    settings: dict[str, Any] = {"trial": {"window_s": 0.4, "min_inferences": 8, "max_error_rate": 0.05,
                                          "max_latency_ratio": 3.0},
                                "min_free_mb": 0, "retry_backoff_s": 0.1, "warmup_runs": 2}
    settings.update(update)
    return AgentConfig.model_validate({
        "device_id": device_id, "state_dir": str(state_dir), "mqtt": {"enabled": False},
        "server": {"url": server.url, "enrollment_token": server.enrollment_token,
                   "public_key": str(server.public_key_path), "poll_interval_s": 0.2, "timeout_s": 10},
        "update": settings})


class Traffic:
    """Threads calling host.infer in a loop; counts answers by the version that served them."""

    def __init__(self, host: ModelHost, threads: int = 1, batch: int = 2, pause_s: float = 0.001) -> None:
        self.host = host
        self.batch = batch
        self.pause_s = pause_s
        self.served: Counter[int] = Counter()
        self.failed: Counter[int] = Counter()
        self.no_model = 0
        self.outputs: dict[int, np.ndarray] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()

    def _loop(self) -> None:
        feeds = {"image": image(self.batch)}
        while not self._stop.is_set():
            meta = self.host.meta
            try:
                outputs, served = self.host.infer(feeds)
            except RuntimeError:
                self.no_model += 1
                time.sleep(0.01)
                continue
            except Exception:
                with self._lock:
                    self.failed[meta.version if meta else -1] += 1
                continue
            finally:
                time.sleep(self.pause_s)
            with self._lock:
                self.served[served.version] += 1
                self.outputs[served.version] = outputs["scores"]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


class Device:
    def __init__(self, server: RunningServer, tmp_path: Path, device_id: str, **update: Any) -> None:
        self.server = server
        self.config = agent_config(server, tmp_path / device_id, device_id, **update)
        self.host = ModelHost()
        self.log = EventLog()
        self.client = UpdateClient(self.config, self.host, self.log, ort_loader)
        self.client.api()  # enrolls with the enrollment token, as the agent does at its first start

    def restart(self) -> None:
        """A fresh process's view of the same state directory: recover, then load the active slot."""
        self.host = ModelHost()
        self.log = EventLog()
        self.client = UpdateClient(self.config, self.host, self.log, ort_loader)
        self.client.recover()
        active = self.client.slots.active()
        if active is not None:
            self.host.swap(ort_loader(*active), active[1])

    def update(self, timeout: float = 30.0) -> str:
        """Poll until the client sits in a terminal state again; returns it."""
        deadline = time.monotonic() + timeout
        state = self.client.run_once()
        while state.value in ("downloading", "verifying", "installing", "trial"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"update stuck in {state.value}: {self.client.last_error}")
            time.sleep(0.05)
            state = self.client.run_once()
        return state.value

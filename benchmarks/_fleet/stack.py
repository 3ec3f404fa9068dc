"""The server and broker the fleet talks to: started here on free loopback ports, or existing ones,
plus the operator's calls (admin token) and the stored-telemetry counter."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Stack:
    server_url: str
    admin_token: str
    enrollment_token: str
    public_key_pem: bytes
    mqtt_host: str
    mqtt_port: int
    mqtt_v5: bool
    broker_kind: str
    db_path: Path | None = None  # the server's SQLite file when this process started the server
    db_url: str | None = None  # the server's PostgreSQL database when this process started it
    cluster: Any = None  # tests.support.cluster.Cluster, for a scale-out run
    pids: dict[str, int] = field(default_factory=dict)  # server / broker, when started here
    _stops: list[Any] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()
        self._stops.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def start_local(*, broker: str = "auto", log_level: str = "WARNING", rollout_tick_s: float = 0.5,
                overrides: dict[str, Any] | None = None) -> Stack:
    """A broker (Mosquitto, else amqtt) and ``edgefleet-server run`` on free 127.0.0.1 ports."""
    from edgefleet.server.demo.broker import start_broker
    from tests.support.net import free_port
    from tests.support.server import start_server

    tmp = tempfile.TemporaryDirectory(prefix="fleet-sim-")
    root = Path(tmp.name)
    stops: list[Any] = []
    try:
        running_broker = start_broker(free_port(), root / "broker", prefer=broker)
        stops.append(running_broker.stop)
        server = start_server(root, running_broker.port, timeout=60, overrides={
            "log_level": log_level, "rollout_tick_s": rollout_tick_s, **(overrides or {})})
        stops.append(server.stop)
    except BaseException:
        for stop in reversed(stops):
            stop()
        tmp.cleanup()
        raise
    return Stack(server_url=server.url, admin_token=server.admin_token, enrollment_token=server.enrollment_token,
                 public_key_pem=server.public_key_path.read_bytes(), mqtt_host="127.0.0.1",
                 mqtt_port=running_broker.port, mqtt_v5=running_broker.kind == "mosquitto",
                 broker_kind=running_broker.kind, db_path=server.workdir / "edgefleet.db",
                 pids={"server": server.proc.pid, "broker": running_broker.proc.pid}, _stops=stops, _tmp=tmp)


def existing(*, server_url: str, admin_token: str, enrollment_token: str, public_key: Path, broker: str,
             mqtt_v5: bool) -> Stack:
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--broker must be HOST:PORT, not {broker!r}")
    return Stack(server_url=server_url.rstrip("/"), admin_token=admin_token, enrollment_token=enrollment_token,
                 public_key_pem=public_key.read_bytes(), mqtt_host=host, mqtt_port=int(port), mqtt_v5=mqtt_v5,
                 broker_kind="existing")


class Operator:
    """The admin-token calls the run makes."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.server_url, timeout=60,
                                 headers={"Authorization": f"Bearer {stack.admin_token}"})

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A GET, again on a new connection when the one it went on broke (a replica killed behind the load
        balancer closes the kept-alive connection without an answer)."""
        for attempt in range(5):
            try:
                return self.http.get(path, **kwargs)
            except httpx.TransportError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                               f"{response.status_code} {response.text[:300]}")
        return response.json()

    def upload(self, name: str, path: Path) -> dict[str, Any]:
        with path.open("rb") as handle:
            return dict(self._ok(self.http.post(f"/v1/models/{name}/versions", files={"file": (path.name, handle)})))

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._ok(self.http.post("/v1/rollouts", json=body)))

    def rollout_summary(self, rollout_id: int) -> dict[str, Any]:
        """The rollout without its per-device table (cheap at 10,000 devices)."""
        for rollout in self._ok(self._get("/v1/rollouts"))["rollouts"]:
            if rollout["id"] == rollout_id:
                return dict(rollout)
        raise RuntimeError(f"rollout {rollout_id} is gone")

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return dict(self._ok(self._get(f"/v1/rollouts/{rollout_id}")))

    def telemetry(self, device_id: str, limit: int = 10_000) -> list[dict[str, Any]]:
        return list(self._ok(self._get(f"/v1/devices/{device_id}/telemetry", params={"limit": limit}))["telemetry"])

    def events(self, device_id: str, limit: int = 10_000) -> list[dict[str, Any]]:
        return list(self._ok(self._get(f"/v1/devices/{device_id}/events", params={"limit": limit}))["events"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self._ok(self._get(f"/v1/devices/{device_id}")))


class TelemetryCounter:
    """Telemetry rows the server has stored for this run's devices.

    With the server started here: ``count(*)`` on its SQLite file (read-only; WAL lets it read while the
    server writes). With an existing server: the API, over a sample of devices, scaled to the fleet.
    """

    def __init__(self, stack: Stack, operator: Operator, device_ids: list[str], sample: int = 20) -> None:
        self.operator, self.device_ids = operator, device_ids
        self.db: Any = None
        self.method = f"API sample of {sample} devices"
        if stack.db_path is not None:
            self.db = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=10,
                                      check_same_thread=False)
            self.method = "sqlite count(*)"
        elif stack.db_url is not None:
            import psycopg

            self.db = psycopg.connect(stack.db_url.replace("postgresql+psycopg://", "postgresql://", 1),
                                      autocommit=True)
            self.method = "postgresql count(*)"
        step = max(1, len(device_ids) // sample)
        self.sample = device_ids[::step][:sample]
        self.exact = self.db is not None

    def count(self) -> int:
        if self.db is not None:
            return int(self.db.execute("SELECT count(*) FROM telemetry").fetchone()[0])
        seen = sum(len(self.operator.telemetry(d)) for d in self.sample)
        return round(seen * len(self.device_ids) / len(self.sample))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

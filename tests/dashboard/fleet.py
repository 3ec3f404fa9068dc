"""A small fleet fed through a real Mosquitto into the real server: births, wills, telemetry, events
(shaped like agent.wire Birth/Will/Telemetry/Event), two model versions and one rollout.

Known state after ``seed()`` (the tests assert these exact values):
- online: cam-01 (detector v1), cam-02 (detector v2, drift psi 0.31), cam-03 (detector v1), XSS_ID (no model;
  enrolled straight in the database, as HTTP enrollment refuses such an id and MQTT stores only enrolled ids)
- offline: cam-04 (birth then will; detector v1), cam-05 (enrolled, never connected)
- cam-01: TELEMETRY_N samples, p50 = 1 + 0.1 i, p95 = 2 + 0.2 i, cpu = 10 + i (i = 0..N-1), two events
- cam-02 and cam-03 send latency histograms (V2_TIMED_MS, V1_TIMED_MS): the fleet p95 per version
- rollout 1: detector v2 to cam-03 and cam-04, waves {"counts": [1, 2]}, soak 3600 s
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import latency
from edgefleet.agent.wire import TOPIC_ROOT, Birth, Event, LatencyHist, LatencySummary, ModelRef, Telemetry, Will
from tests.support.models import make_onnx_image_classifier
from tests.support.net import wait_until
from tests.support.server import RunningServer

XSS_ID = "<img src=x onerror=document.body.dataset.pwned=1>"
XSS_EVENT = "<script>document.body.dataset.pwned=2</script>"
TELEMETRY_N = 24
V1_TIMED_MS = [1.5] * 90 + [2.5] * 10  # cam-03's latency histogram: the fleet p95 of v1 is 2.5 ms (to 2 %)
V2_TIMED_MS = [3.0] * 50 + [6.0] * 50  # cam-02's: v2's p95 is 6 ms
SHA = {1: "1" * 64, 2: "2" * 64}


@dataclass
class Fleet:
    server: RunningServer
    client: mqtt.Client
    tokens: dict[str, str] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)  # valid messages by topic leaf
    model_files: list[Path] = field(default_factory=list)
    start_ts: float = 0.0

    def send(self, device: str, leaf: str, document: dict[str, Any], retain: bool = False) -> None:
        info = self.client.publish(f"{TOPIC_ROOT}/{device}/{leaf}", json.dumps(document), qos=1, retain=retain)
        info.wait_for_publish(5)
        self.published[leaf] = self.published.get(leaf, 0) + 1

    def rollout_device(self, state: str) -> str:
        """The device of rollout 1 in ``state`` (which one is in wave 1 follows a hash of the ids)."""
        rows = self.api("/v1/rollouts/1")["devices"]
        return str(next(r["device_id"] for r in rows if r["state"] == state))

    def api(self, path: str) -> Any:
        response = requests.get(self.server.url + path, headers=self.server.admin(), timeout=10)
        response.raise_for_status()
        return response.json()


def connect(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-sim", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def birth(session: int, version: int | None) -> dict[str, Any]:
    model = ModelRef(name="detector", version=version, sha256=SHA[version]) if version else ModelRef()
    return Birth(session=session, agent_version="0.1.0", model=model, runtime="onnxruntime",
                 delegate="CPUExecutionProvider", device_class="rpi4").model_dump(mode="json")


def telemetry(seq: int, ts: float, *, p50: float, p95: float, cpu: float, version: int,
              drift: dict[str, Any] | None = None, timed_ms: list[float] | None = None) -> dict[str, Any]:
    doc = Telemetry(seq=seq, ts=ts, model=ModelRef(name="detector", version=version, sha256=SHA[version]),
                    runtime="onnxruntime", delegate="CPUExecutionProvider", drift=drift)
    doc.inference.count, doc.inference.fps = 100 * seq, 10.0
    if timed_ms is not None:  # latencies of the interval on the contract's buckets
        counts: dict[int, int] = {}
        for ms in timed_ms:
            counts[latency.bucket_of(ms)] = counts.get(latency.bucket_of(ms), 0) + 1
        doc.inference.latency_hist = LatencyHist.model_validate(latency.encode(counts))
    doc.inference.latency_ms = LatencySummary(p50=p50, p95=p95, p99=p95 * 1.2, max=p95 * 1.5)
    doc.system.cpu_pct, doc.system.rss_mb = cpu, 80.0
    return doc.model_dump(mode="json")


def push(server: RunningServer, name: str, path: Path) -> dict[str, Any]:
    response = requests.post(f"{server.url}/v1/models/{name}/versions", headers=server.admin(), timeout=30,
                             files={"file": (path.name, path.read_bytes())})
    response.raise_for_status()
    return dict(response.json())


def enroll_in_database(server: RunningServer, device_id: str) -> None:
    from edgefleet.server.config import load_server_config
    from edgefleet.server.crud import devices
    from edgefleet.server.db import Database

    db = Database(load_server_config(server.config_path).database_url)
    try:
        with db.session() as session:
            devices.enroll_device(session, device_id=device_id, device_class=None, tags=[], hw={})
    finally:
        db.dispose()


def seed(server: RunningServer, broker_port: int, workdir: Path) -> Fleet:
    fleet = Fleet(server=server, client=connect(broker_port), start_ts=time.time())
    wait_until(lambda: requests.get(server.url + "/healthz", timeout=2).json()["mqtt"]["connected"], timeout=10)
    fleet.model_files = [make_onnx_image_classifier(workdir / f"det{i}.onnx", seed=i) for i in (0, 1)]
    for path in fleet.model_files:
        push(server, "detector", path)
    for i in range(1, 6):
        fleet.tokens[f"cam-{i:02d}"] = server.enroll(f"cam-{i:02d}", device_class="rpi4", tags=["lab"],
                                                      hw={"runtimes": ["onnxruntime"]})
    enroll_in_database(server, XSS_ID)
    for device, version in (("cam-01", 1), ("cam-02", 2), ("cam-03", 1), ("cam-04", 1)):
        fleet.send(device, "status", birth(1, version), retain=True)
    fleet.send(XSS_ID, "status", birth(1, None), retain=True)
    fleet.send("cam-04", "status", Will(session=1).model_dump(mode="json"), retain=True)
    now = time.time()
    for i in range(TELEMETRY_N):
        fleet.send("cam-01", "telemetry", telemetry(i + 1, now - 10 * (TELEMETRY_N - i), p50=1 + 0.1 * i,
                                                    p95=2 + 0.2 * i, cpu=10.0 + i, version=1))
    fleet.send("cam-02", "telemetry", telemetry(1, now - 5, p50=3.0, p95=6.0, cpu=40.0, version=2,
                                                drift={"psi": 0.31}, timed_ms=V2_TIMED_MS))
    fleet.send("cam-03", "telemetry", telemetry(1, now - 5, p50=1.5, p95=2.5, cpu=12.0, version=1,
                                                drift={"psi": 0.05}, timed_ms=V1_TIMED_MS))
    fleet.send("cam-01", "events", Event.model_validate({"seq": 1, "ts": now - 100, "type": "update.committed",
                                                         "version": 1}).model_dump(mode="json"))
    fleet.send("cam-01", "events", Event.model_validate({"seq": 2, "ts": now - 50, "type": "runtime.fallback",
                                                         "reason": XSS_EVENT}).model_dump(mode="json"))
    response = requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "detector", "version": 2, "target": {"device_ids": ["cam-03", "cam-04"]},
        "waves": {"counts": [1, 2]}, "gates": {"soak_s": 3600}})
    response.raise_for_status()

    def settled() -> bool:
        devices = {d["device_id"]: d for d in fleet.api("/v1/devices")["devices"]}
        rows = fleet.api("/v1/devices/cam-01/telemetry")["telemetry"]
        events = fleet.api("/v1/devices/cam-01/events")["events"]
        return (len(rows) == TELEMETRY_N and len(events) == 2 and XSS_ID in devices
                and devices["cam-04"]["online"] is False and devices["cam-02"]["p95_ms"] == 6.0
                and devices["cam-03"]["p95_ms"] == 2.5)

    wait_until(settled, timeout=20, interval=0.1)
    return fleet

"""The p95 gate end to end: the real server, a real Mosquitto, devices driven over HTTP (check-in, reports)
and MQTT (telemetry). A 2x slower version pauses its first wave with the figures in the reason; the same
speed with every device loaded 3x during the rollout (what a pre/post comparison mistakes for a regression)
completes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from tests.server.test_rollouts import desired, push, report, rollout
from tests.support.broker import Mosquitto
from tests.support.models import make_onnx_image_classifier
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

GATES = {"min_committed_ratio": 1.0, "max_failure_ratio": 0.1, "max_p95_regression": 1.5, "soak_s": 0.5,
         "latency_alpha": 0.01, "latency_min_devices": 3, "latency_min_samples": 3, "latency_warmup_s": 0.0,
         "latency_baseline_s": 100.0, "latency_max_wait_s": None}


@pytest.fixture
def live(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[RunningServer, mqtt.Client]]:
    server = start_server(tmp_path, mqtt_port=mosquitto.port,
                          overrides={"telemetry": {"batch_interval_s": 0.05}, "rollout_tick_s": 0.2})
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-fleet", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    wait_until(lambda: requests.get(server.url + "/healthz", timeout=2).json()["mqtt"]["connected"], timeout=10)
    try:
        yield server, client
    finally:
        client.loop_stop()
        client.disconnect()
        server.stop()


class Fleet:
    """Fake devices of one model: base p95s 2.0, 2.1, ... ms; each telemetry message one seq further."""

    def __init__(self, server: RunningServer, client: mqtt.Client, name: str, count: int) -> None:
        self.server, self.client, self.name = server, client, name
        self.tokens = {f"{name}-{i}": server.enroll(f"{name}-{i}", device_class="rpi4", tags=[name])
                       for i in range(count)}
        self.base = {d: 2.0 + 0.1 * i for i, d in enumerate(self.tokens)}
        self.seq = dict.fromkeys(self.tokens, 0)
        self.sent = 0

    def telemetry(self, device: str, version: int, p95: float, ts: float) -> None:
        self.seq[device] += 1
        doc: dict[str, Any] = {"seq": self.seq[device], "ts": ts, "model": {"name": self.name, "version": version},
                               "runtime": "onnxruntime", "system": {"cpu_pct": 50.0, "rss_mb": 50.0},
                               "inference": {"count": 100, "errors": 0, "fps": 10.0,
                                             "latency_ms": {"p50": p95 / 2, "p95": p95}}}
        self.client.publish(f"edgefleet/v1/devices/{device}/telemetry", json.dumps(doc),
                            qos=1).wait_for_publish(5)
        self.sent += 1

    def report_all(self, devices: list[str], version: int, rollout_id: int) -> None:
        for device in devices:
            assert desired(self.server, device, self.tokens[device]) is not None  # the check-in
            report(self.server, device, self.tokens[device], "committed", self.name, version, rollout_id)

    def stored(self) -> int:
        total = 0
        for device in self.tokens:
            rows = requests.get(f"{self.server.url}/v1/devices/{device}/telemetry", headers=self.server.admin(),
                                timeout=5).json()
            total += len(rows if isinstance(rows, list) else rows.get("telemetry", rows.get("items", [])))
        return total

    def wait_stored(self) -> None:
        wait_until(lambda: self.stored() >= self.sent, timeout=20)


def start(fleet: Fleet, onnx: tuple[Path, Path], *, history_age: float, counts: list[int]) -> int:
    """v1 on every device (a one-wave rollout, all committed), 3 messages of history ``history_age`` s old (the
    gate's pre-update window is 100 s), then v2 in waves of ``counts`` devices."""
    push(fleet.server, fleet.name, onnx[0])
    push(fleet.server, fleet.name, onnx[1])
    first = requests.post(fleet.server.url + "/v1/rollouts", headers=fleet.server.admin(), timeout=10, json={
        "model": fleet.name, "version": 1, "target": {"tags": [fleet.name]}, "waves": [100],
        "gates": {"soak_s": 0, "max_p95_regression": None}}).json()
    fleet.report_all(list(fleet.tokens), 1, first["id"])
    wait_until(lambda: rollout(fleet.server, first["id"])["state"] == "completed", timeout=10)
    now = time.time()
    for device in fleet.tokens:
        for k in range(3):
            fleet.telemetry(device, 1, fleet.base[device], now - history_age + k)
    fleet.wait_stored()
    created = requests.post(fleet.server.url + "/v1/rollouts", headers=fleet.server.admin(), timeout=10, json={
        "model": fleet.name, "version": 2, "target": {"tags": [fleet.name]}, "waves": {"counts": counts},
        "gates": GATES})
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def wave_devices(server: RunningServer, rid: int, wave: int) -> list[str]:
    return [d["device_id"] for d in rollout(server, rid)["devices"] if d["wave"] == wave]


def send_round(fleet: Fleet, updated: set[str], *, slowdown: float, load: float) -> None:
    for device in fleet.tokens:
        on_v2 = device in updated
        fleet.telemetry(device, 2 if on_v2 else 1, fleet.base[device] * load * (slowdown if on_v2 else 1.0),
                        time.time())


@pytest.fixture(scope="module")
def onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gate-models")
    return (make_onnx_image_classifier(base / "a.onnx", seed=0),
            make_onnx_image_classifier(base / "b.onnx", seed=1))


def test_a_twice_as_slow_version_pauses_its_first_wave(live: tuple[RunningServer, mqtt.Client],
                                                      onnx: tuple[Path, Path]) -> None:
    server, client = live
    fleet = Fleet(server, client, "slow", 12)
    rid = start(fleet, onnx, history_age=60, counts=[4, 12])
    first = wave_devices(server, rid, 0)
    assert len(first) == 4
    fleet.report_all(first, 2, rid)
    for _ in range(2):  # not enough messages yet: the gate waits, it neither pauses nor advances
        send_round(fleet, set(first), slowdown=2.0, load=1.0)
    fleet.wait_stored()
    time.sleep(1.0)
    waiting = rollout(server, rid)
    assert (waiting["state"], waiting["current_wave"]) == ("running", 0)
    send_round(fleet, set(first), slowdown=2.0, load=1.0)
    paused = wait_until(lambda: (r := rollout(server, rid))["state"] == "paused" and r, timeout=20)
    assert isinstance(paused, dict)
    reason = paused["reason"]
    assert re.fullmatch(r"wave 1: p95 latency x(\d+\.\d\d) \(updated (\S+) ms, n=4 devices; control (\S+) ms, "
                        r"n=8; each device against its pre-update window: updated x2\.00, control x1\.00; "
                        r"Mann-Whitney p=(\S+) < 0\.01\) above x1\.50", reason), reason
    ratio = float(re.search(r"x(\d+\.\d\d)", reason).group(1))  # type: ignore[union-attr]
    assert 1.5 < ratio < 3.0
    assert float(re.search(r"p=(\S+) <", reason).group(1)) < 0.01  # type: ignore[union-attr]


def test_the_same_speed_under_load_is_not_paused(live: tuple[RunningServer, mqtt.Client],
                                                 onnx: tuple[Path, Path]) -> None:
    server, client = live
    fleet = Fleet(server, client, "loaded", 12)
    rid = start(fleet, onnx, history_age=200, counts=[4, 12])  # no pre-update window: the ms figures
    first = wave_devices(server, rid, 0)
    fleet.report_all(first, 2, rid)
    for _ in range(3):  # every device 3x slower than its history: the machine is busy, not the model
        send_round(fleet, set(first), slowdown=1.0, load=3.0)
    wait_until(lambda: rollout(server, rid)["current_wave"] == 1, timeout=20)
    assert rollout(server, rid)["state"] == "running"
    second = wave_devices(server, rid, 1)
    assert len(second) == 8
    fleet.report_all(second, 2, rid)  # the last wave: no control left, its own (loaded) pre-update window
    for _ in range(3):
        send_round(fleet, set(fleet.tokens), slowdown=1.0, load=3.0)
    done = wait_until(lambda: (r := rollout(server, rid))["state"] != "running" and r, timeout=20)
    assert isinstance(done, dict)
    assert (done["state"], done["reason"]) == ("completed", None)


@pytest.mark.parametrize("slowdown", [1.0, 2.0])
def test_a_one_device_canary_among_three_on_a_loaded_box(live: tuple[RunningServer, mqtt.Client],
                                                         onnx: tuple[Path, Path], slowdown: float) -> None:
    """The demo's shape: 3 devices, a 1-device first wave; every device 3x slower during the wave."""
    server, client = live
    fleet = Fleet(server, client, f"tiny{int(slowdown)}", 3)
    rid = start(fleet, onnx, history_age=60, counts=[1, 3])
    first = wave_devices(server, rid, 0)
    assert len(first) == 1
    fleet.report_all(first, 2, rid)
    for _ in range(4):  # 3 messages against 6 cannot reach p < 0.01 (1/84 at best): the 4th round decides
        send_round(fleet, set(first), slowdown=slowdown, load=3.0)
    if slowdown == 1.0:
        wait_until(lambda: rollout(server, rid)["current_wave"] == 1, timeout=20)
        assert rollout(server, rid)["state"] == "running"
        return
    paused = wait_until(lambda: (r := rollout(server, rid))["state"] == "paused" and r, timeout=20)
    assert isinstance(paused, dict)
    assert re.fullmatch(r"wave 1: p95 latency x2\.00 relative to each device's pre-update window \(updated \S+ ms, "
                        r"x6\.00 of before, n=1 devices, 4 messages; control \S+ ms, x3\.00 of before, n=2, 8 "
                        r"messages; Mann-Whitney p=\S+ < 0\.01\) above x1\.50", paused["reason"]), paused["reason"]

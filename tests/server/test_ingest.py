"""Telemetry through a real Mosquitto into the real server: status sessions, duplicates, commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server


@pytest.fixture
def live(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[RunningServer, mqtt.Client]]:
    server = start_server(tmp_path, mqtt_port=mosquitto.port,
                          overrides={"telemetry": {"batch_interval_s": 0.05}})
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-device", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    wait_until(lambda: requests.get(server.url + "/healthz", timeout=2).json()["mqtt"]["connected"], timeout=10)
    try:
        yield server, client
    finally:
        client.loop_stop()
        client.disconnect()
        server.stop()


def send(client: mqtt.Client, device: str, leaf: str, document: dict[str, Any], retain: bool = False) -> None:
    client.publish(f"edgefleet/v1/devices/{device}/{leaf}", json.dumps(document), qos=1,
                   retain=retain).wait_for_publish(5)


def telemetry(seq: int, p95: float, cpu: float) -> dict[str, Any]:
    return {"seq": seq, "ts": 1000.0 + seq, "model": {"name": "m", "version": 3}, "runtime": "onnxruntime",
            "inference": {"count": 10 * seq, "errors": 0, "latency_ms": {"p50": 1.0, "p95": p95}, "fps": 5.0},
            "system": {"cpu_pct": cpu, "rss_mb": 50.0}}


def device(server: RunningServer, device_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/v1/devices/{device_id}", headers=server.admin(), timeout=5).json())


def test_telemetry_events_and_status_are_stored_once(live: tuple[RunningServer, mqtt.Client]) -> None:
    server, client = live
    server.enroll("tel-1")
    send(client, "tel-1", "status", {"online": True, "session": 4, "agent_version": "0.1",
                                      "model": {"name": "m", "version": 3, "sha256": "ab" * 32},
                                      "runtime": "onnxruntime", "delegate": "CPUExecutionProvider"}, retain=True)
    for seq, p95, cpu in ((1, 2.5, 10.0), (2, 3.5, 20.0), (2, 99.0, 99.0), (3, 4.5, 30.0)):  # seq 2 twice
        send(client, "tel-1", "telemetry", telemetry(seq, p95, cpu))
    send(client, "tel-1", "events", {"seq": 1, "ts": 1001.0, "type": "update.committed", "version": 3})
    send(client, "tel-1", "events", {"seq": 1, "ts": 1001.0, "type": "update.committed", "version": 3})
    send(client, "tel-1", "telemetry", {"seq": "not a number"})
    url = f"{server.url}/v1/devices/tel-1/telemetry"
    rows = wait_until(lambda: len(r := requests.get(url, headers=server.admin(), timeout=5).json()["telemetry"]) == 3
                      and r, timeout=10)
    assert isinstance(rows, list)
    assert [(r["seq"], r["p95_ms"], r["cpu_pct"], r["model_version"]) for r in rows] == [
        (1, 2.5, 10.0, 3), (2, 3.5, 20.0, 3), (3, 4.5, 30.0, 3)]
    assert rows[0]["payload"]["inference"]["count"] == 10
    events = requests.get(f"{server.url}/v1/devices/tel-1/events", headers=server.admin(), timeout=5).json()
    assert [(e["seq"], e["type"], e["payload"]["version"]) for e in events["events"]] == [(1, "update.committed", 3)]
    state = wait_until(lambda: (d := device(server, "tel-1"))["p95_ms"] == 4.5 and d, timeout=5)
    assert isinstance(state, dict)
    assert (state["online"], state["session"], state["model_name"], state["model_version"], state["runtime"],
            state["cpu_pct"]) == (True, 4, "m", 3, "onnxruntime", 30.0)
    # a late will from an older session does not mark the reconnected device offline
    send(client, "tel-1", "status", {"online": False, "session": 3}, retain=True)
    send(client, "tel-1", "telemetry", telemetry(4, 5.5, 40.0))
    wait_until(lambda: device(server, "tel-1")["p95_ms"] == 5.5, timeout=5)
    assert device(server, "tel-1")["online"] is True
    send(client, "tel-1", "status", {"online": False, "session": 4}, retain=True)
    wait_until(lambda: device(server, "tel-1")["online"] is False, timeout=5)


def test_commands_are_published_on_the_device_topic(live: tuple[RunningServer, mqtt.Client]) -> None:
    server, client = live
    server.enroll("cmd-1")
    got: list[dict[str, Any]] = []
    client.on_message = lambda _c, _u, message: got.append(json.loads(message.payload))
    client.subscribe("edgefleet/v1/devices/cmd-1/commands", qos=1)
    wait_until(lambda: client.is_connected(), timeout=5)
    import time

    time.sleep(0.2)  # let the SUBACK land before the command is published
    response = requests.post(f"{server.url}/v1/devices/cmd-1/commands", headers=server.admin(), timeout=5,
                             json={"type": "check_update", "args": {"now": True}})
    assert response.status_code == 202
    wait_until(lambda: got, timeout=5)
    assert got == [{"id": response.json()["id"], "type": "check_update", "args": {"now": True}}]
    missing = requests.post(f"{server.url}/v1/devices/nobody/commands", headers=server.admin(), timeout=5,
                            json={"type": "check_update"})
    assert missing.status_code == 404

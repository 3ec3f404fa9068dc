"""Push (server/push.py): check_update over a real broker when a wave starts and on revert, spread over the
window; none for a rollout created with push off, none on a pause; a dead broker leaves polling to do it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.wire import TOPIC_ROOT, Birth, Will
from tests.server.test_ingest import device as device_doc
from tests.server.test_ingest import send
from tests.server.test_rollouts import desired, push, report, rollout
from tests.support.broker import Mosquitto
from tests.support.cluster import start_cluster
from tests.support.databases import database_url, postgres_reason
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

SPREAD_S = 2.0


class Commands:
    """A subscriber to every device's commands topic: (device id, command, monotonic time received)."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[str, dict[str, Any], float]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"push-test-{id(self):x}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe(f"{TOPIC_ROOT}/+/commands", qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        device_id = message.topic.split("/")[-2]
        with self._lock:
            self.received.append((device_id, json.loads(message.payload), time.monotonic()))

    def to(self, devices: set[str]) -> list[tuple[str, dict[str, Any], float]]:
        with self._lock:
            return [r for r in self.received if r[0] in devices]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def pushing(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("srv"), broker.port, overrides={
        "rollouts": {"push_spread_s": SPREAD_S, "push_rate_per_s": 100.0}})
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def commands(broker: Mosquitto) -> Iterator[Commands]:
    subscriber = Commands(broker.port)
    try:
        yield subscriber
    finally:
        subscriber.close()


def create(server: RunningServer, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(server.url + "/v1/rollouts", headers=server.admin(), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for(commands: Commands, devices: set[str], count: int, timeout: float = 20.0) -> list[Any]:
    got = wait_until(lambda: len(r := commands.to(devices)) >= count and r, timeout=timeout)
    assert isinstance(got, list)
    return got


def test_wave_starts_and_revert_push_spread_over_the_window(pushing: RunningServer, commands: Commands,
                                                            onnx_files: tuple[Path, Path]) -> None:
    tokens = {f"pw-{i}": pushing.enroll(f"pw-{i}", tags=["pw"]) for i in range(8)}
    everyone = set(tokens)
    push(pushing, "pw", onnx_files[0])
    sent_before = pushing.metric("edgefleet_push_sent_total")
    doc = create(pushing, {"model": "pw", "version": 1, "target": {"tags": ["pw"]}, "waves": [50, 100],
                           "gates": {"min_committed_ratio": 1.0, "soak_s": 0, "max_p95_regression": None}})
    rid = doc["id"]
    assert doc["push"] is True
    first = {d["device_id"] for d in doc["devices"] if d["state"] == "assigned"}
    assert len(first) == 4
    wave1 = wait_for(commands, everyone, 4)
    assert {device for device, _, _ in wave1} == first
    assert all(c["type"] == "check_update" and c["args"] == {"rollout_id": rid} for _, c, _ in wave1)
    assert len({c["id"] for _, c, _ in wave1}) == 4
    # 4 devices over a 2 s window: one every 0.5 s, the first at once; a loaded box only stretches it
    times = sorted(t for _, _, t in wave1)
    assert times[-1] - times[0] >= 0.5 * SPREAD_S * 3 / 4
    time.sleep(SPREAD_S)
    assert len(commands.to(everyone)) == 4  # no device twice, none of the second wave yet

    for device in first:
        report(pushing, device, tokens[device], "committed", "pw", 1, rid)
    second = everyone - first
    wave2 = wait_for(commands, second, 4)
    assert {device for device, _, _ in wave2} == second
    assert rollout(pushing, rid)["current_wave"] == 1

    # a pause changes no device's desired state: nothing to push
    paused = requests.post(f"{pushing.url}/v1/rollouts/{rid}/pause", headers=pushing.admin(), timeout=5)
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    time.sleep(SPREAD_S)
    assert len(commands.to(everyone)) == 8
    # a device enrolled meanwhile joins the last wave; the resume assigns it, and only it is pushed
    tokens["pw-8"] = pushing.enroll("pw-8", tags=["pw"])
    everyone.add("pw-8")
    resumed = requests.post(f"{pushing.url}/v1/rollouts/{rid}/resume", headers=pushing.admin(), timeout=5)
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert [d for d, _, _ in wait_for(commands, everyone, 9)[8:]] == ["pw-8"]
    # abort with revert sends all nine back: each is told to check in, and finds the revert
    aborted = requests.post(f"{pushing.url}/v1/rollouts/{rid}/abort", headers=pushing.admin(), timeout=5,
                            json={"revert": True})
    assert aborted.status_code == 200
    reverts = wait_for(commands, everyone, 18)[9:]
    assert sorted(device for device, _, _ in reverts) == sorted(everyone)
    assert all(desired(pushing, d, tokens[d]) is None for d in everyone)  # no earlier model to go back to
    wait_until(lambda: pushing.metric("edgefleet_push_sent_total") - sent_before >= 18, timeout=10)
    assert pushing.metric("edgefleet_push_failed_total") == 0


def test_a_rollout_without_push_leaves_it_to_polling(pushing: RunningServer, commands: Commands,
                                                     onnx_files: tuple[Path, Path]) -> None:
    tokens = {f"np-{i}": pushing.enroll(f"np-{i}", tags=["np"]) for i in range(3)}
    push(pushing, "np", onnx_files[0])
    doc = create(pushing, {"model": "np", "version": 1, "target": {"tags": ["np"]}, "waves": [100],
                           "push": False, "gates": {"soak_s": 0, "max_p95_regression": None}})
    assert doc["push"] is False
    listed = requests.get(pushing.url + "/v1/rollouts", headers=pushing.admin(), timeout=5).json()["rollouts"]
    assert [r["push"] for r in listed if r["id"] == doc["id"]] == [False]
    time.sleep(SPREAD_S * 1.5)
    assert commands.to(set(tokens)) == []
    for device, token in tokens.items():  # the next poll finds it
        manifest = desired(pushing, device, token)
        assert manifest is not None and manifest["rollout_id"] == doc["id"]
    aborted = requests.post(f"{pushing.url}/v1/rollouts/{doc['id']}/abort", headers=pushing.admin(), timeout=5,
                            json={"revert": True})
    assert aborted.status_code == 200
    time.sleep(SPREAD_S)
    assert commands.to(set(tokens)) == []


def test_a_dead_broker_fails_the_push_not_the_rollout(tmp_path: Path, mosquitto: Mosquitto,
                                                      onnx_files: tuple[Path, Path]) -> None:
    server = start_server(tmp_path, mosquitto.port, overrides={"rollouts": {"push_spread_s": 0.5}})
    try:
        tokens = {f"db-{i}": server.enroll(f"db-{i}", tags=["db"]) for i in range(3)}
        push(server, "db", onnx_files[0])
        mosquitto.stop()
        wait_until(lambda: server.metric("edgefleet_mqtt_connected") == 0, timeout=20)
        doc = create(server, {"model": "db", "version": 1, "target": {"tags": ["db"]}, "waves": [100],
                              "gates": {"soak_s": 0, "max_p95_regression": None}})
        wait_until(lambda: server.metric("edgefleet_push_failed_total") == 3, timeout=10)
        assert server.metric("edgefleet_push_sent_total") == 0
        for device, token in tokens.items():  # polling still finds the new desired state
            manifest = desired(server, device, token)
            assert manifest is not None and manifest["rollout_id"] == doc["id"]
            report(server, device, token, "committed", "db", 1, doc["id"])
        wait_until(lambda: rollout(server, doc["id"])["state"] == "completed", timeout=10)
        failures = [line for line in server.log().splitlines() if "pushes failed" in line]
        assert len(failures) == 1 and "3 of 3" in failures[0], failures
    finally:
        server.stop()


def test_the_window_holds_pushes_until_devices_fetch_go_offline_or_time_out_and_stragglers_get_pushed_again(
        tmp_path: Path, mosquitto: Mosquitto, onnx_files: tuple[Path, Path]) -> None:
    timeout_s = 5.0
    commands = Commands(mosquitto.port)
    devices = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="window-devices")  # their status messages
    devices.connect("127.0.0.1", mosquitto.port)
    devices.loop_start()
    server = start_server(tmp_path, mosquitto.port, overrides={"rollouts": {
        "push_spread_s": 0, "push_rate_per_s": 100.0, "push_max_in_flight": 2,
        "push_in_flight_timeout_s": timeout_s}})
    try:
        tokens = {f"wi-{i}": server.enroll(f"wi-{i}", tags=["wi"]) for i in range(5)}
        everyone = set(tokens)
        for device_id in tokens:
            send(devices, device_id, "status", Birth(session=1, agent_version="test").model_dump(mode="json"),
                 retain=True)
        wait_until(lambda: all(device_doc(server, d)["online"] for d in tokens), timeout=10)
        push(server, "wi", onnx_files[0])
        doc = create(server, {"model": "wi", "version": 1, "target": {"tags": ["wi"]}, "waves": [100],
                              "gates": {"soak_s": 0, "max_p95_regression": None}})
        rid = doc["id"]
        first = [d for d, _, _ in wait_for(commands, everyone, 2)]
        time.sleep(1.5)
        assert len(commands.to(everyone)) == 2, "pushed past a full window"  # neither has fetched
        # a device that reports it has the artifact frees its place: one more push
        report(server, first[0], tokens[first[0]], "downloading", "wi", 1, rid)
        time.sleep(1.5)
        assert len(commands.to(everyone)) == 2, "a device still downloading left the window"
        report(server, first[0], tokens[first[0]], "installing", "wi", 1, rid)
        third = wait_for(commands, everyone, 3)[2][0]
        # one that goes offline frees its place too
        send(devices, first[1], "status", Will(session=1).model_dump(mode="json"), retain=True)
        fourth_at = wait_for(commands, everyone, 4)[3][2]
        assert len(commands.to(everyone)) == 4
        # the third and fourth never fetch: the fifth goes out once the third's push is timeout_s old
        third_at = next(t for d, _, t in commands.to(everyone) if d == third)
        fifth_at = wait_for(commands, everyone, 5, timeout=4 * timeout_s)[4][2]
        assert fifth_at - third_at >= timeout_s - 0.6, (third_at, fourth_at, fifth_at)
        assert {d for d, _, _ in commands.to(everyone)} == everyone
        assert server.metric("edgefleet_push_held_seconds_total") >= timeout_s - 1.0
        assert any("held with 2 devices yet to fetch" in line for line in server.log().splitlines())
        # and, timeout_s after its push, a device still online and not past the download is pushed again;
        # the one that fetched and the one that went offline are not
        wait_until(lambda: len(commands.to({third})) >= 2, timeout=4 * timeout_s)
        assert server.metric("edgefleet_push_again_total") >= 1
        assert len(commands.to({first[0]})) == 1 and len(commands.to({first[1]})) == 1
        again = [t for d, _, t in commands.to({third})]
        assert again[1] - again[0] >= timeout_s - 0.6, again
        assert any("have not fetched it; pushing them again" in line for line in server.log().splitlines())
    finally:
        server.stop()
        commands.close()
        devices.loop_stop()
        devices.disconnect()


@pytest.mark.postgres
@pytest.mark.skipif(postgres_reason() is not None, reason=str(postgres_reason()))
def test_two_replicas_push_each_wave_once(tmp_path: Path, mosquitto: Mosquitto,
                                          onnx_files: tuple[Path, Path]) -> None:
    commands = Commands(mosquitto.port)
    with database_url("postgresql", tmp_path) as url:
        cluster = start_cluster(tmp_path, 2, database_url=url, mqtt_port=mosquitto.port, proxy=False,
                                overrides={"lease_ttl_s": 2.0, "rollouts": {"push_spread_s": 0.5}})
        try:
            a, b = cluster.replicas
            tokens = {f"rp-{i}": b.enroll(f"rp-{i}", tags=["rp"]) for i in range(3)}
            push(a, "rp", onnx_files[0])
            doc = create(b, {"model": "rp", "version": 1, "target": {"tags": ["rp"]}, "waves": {"counts": [1, 3]},
                             "gates": {"min_committed_ratio": 1.0, "soak_s": 0, "max_p95_regression": None}})
            canary = next(d["device_id"] for d in doc["devices"] if d["wave"] == 0)
            wait_for(commands, {canary}, 1)
            report(a, canary, tokens[canary], "committed", "rp", 1, doc["id"])
            rest = set(tokens) - {canary}
            wait_for(commands, rest, 2)  # wave 2, started by whichever replica leads the rollout loop
            time.sleep(2.0)  # a second push of the same wave would have arrived by now
            assert sorted(d for d, _, _ in commands.to(set(tokens))) == sorted(tokens)
            assert a.metric("edgefleet_push_sent_total") + b.metric("edgefleet_push_sent_total") == 3
        finally:
            cluster.stop()
            commands.close()

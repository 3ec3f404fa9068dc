"""The broker's side of the contract: the will after kill -9, the ACL from configs/mosquitto, 3.1.1-only brokers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.telemetry import Telemetry
from tests.support.broker import Mosquitto
from tests.support.net import free_port, wait_for_port, wait_until
from tests.telemetry.support import ROOT, Collector, agent_config

REPO = Path(__file__).resolve().parents[2]
ACL = (REPO / "configs" / "mosquitto" / "acl").read_text()
PASSWORDS = {"cam-01": "pw1", "cam-02": "pw2", "edgefleet-server": "srv"}


def test_will_marks_a_killed_agent_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    watcher = Collector(mosquitto.port, [f"{ROOT}/cam-01/status"], client_id="watcher")
    proc = subprocess.Popen([sys.executable, "-m", "tests.telemetry.agent_proc", str(tmp_path), str(mosquitto.port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "connected session=1", line
        birth = watcher.wait_for("status")[-1]
        assert birth["online"] is True and birth["session"] == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        will = watcher.wait_for("status", lambda d: d[-1]["online"] is False, timeout=10)[-1]
        assert will == {"online": False, "session": 1, "epoch": birth["epoch"]} and birth["epoch"] > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
    late = Collector(mosquitto.port, [f"{ROOT}/cam-01/status"], client_id="late")
    try:
        assert late.wait_for("status")[-1] == {"online": False, "session": 1, "epoch": birth["epoch"]}  # retained
    finally:
        late.close()


class V5Client:
    """A raw MQTT 5 client that records PUBACK and SUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.got: list[tuple[str, Any]] = []
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{user}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = lambda *a: self.ready.set()
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, [r.value for r in rcs])
        c.on_message = lambda _c, _u, m: self.got.append((m.topic, json.loads(m.payload)))
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self.ready.wait(5)
        self.client = c

    def publish(self, topic: str, doc: dict[str, Any]) -> int:
        info = self.client.publish(topic, json.dumps(doc), qos=1)
        wait_until(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        wait_until(lambda: mid in self.subacks)
        return self.subacks[mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path, acl=ACL, passwords=PASSWORDS).start()
    yield broker
    broker.stop()


def test_acl_confines_each_device_to_its_own_subtree(tmp_path: Path, acl_broker: Mosquitto) -> None:
    port = acl_broker.port
    server = V5Client(port, "edgefleet-server", "srv")
    cam1 = V5Client(port, "cam-01", "pw1")
    try:
        assert server.subscribe(f"{ROOT}/+/telemetry") == [1]
        assert cam1.publish(f"{ROOT}/cam-01/telemetry", {"seq": 1}) == 0  # its own: accepted
        assert cam1.publish(f"{ROOT}/cam-02/telemetry", {"seq": 666}) == 135  # another's: Not authorized
        assert cam1.publish(f"{ROOT}/cam-02/commands", {"id": "x", "type": "check_update"}) == 135
        assert cam1.publish(f"{ROOT}/cam-01/commands", {"id": "x", "type": "check_update"}) == 135
        # Mosquitto 2 grants the SUBACK and applies "read" per message: nothing of cam-02 reaches cam-01
        cam1.subscribe(f"{ROOT}/cam-02/commands")
        cam1.subscribe(f"{ROOT}/+/telemetry")
        assert cam1.subscribe(f"{ROOT}/cam-01/commands") == [1]  # its own
        assert server.publish(f"{ROOT}/cam-02/commands", {"id": "s0", "type": "check_update"}) == 0
        assert server.publish(f"{ROOT}/cam-01/commands", {"id": "s1", "type": "check_update"}) == 0
        cam2 = V5Client(port, "cam-02", "pw2")
        try:
            assert cam2.publish(f"{ROOT}/cam-02/telemetry", {"seq": 2}) == 0
        finally:
            cam2.close()
        wait_until(lambda: len(server.got) >= 2)
        wait_until(lambda: cam1.got)
        assert cam1.got == [(f"{ROOT}/cam-01/commands", {"id": "s1", "type": "check_update"})]
        assert server.got == [(f"{ROOT}/cam-01/telemetry", {"seq": 1}),  # the forged one never arrived
                              (f"{ROOT}/cam-02/telemetry", {"seq": 2})]
    finally:
        server.close()
        cam1.close()


def test_agent_works_under_the_acl_with_its_password(tmp_path: Path, acl_broker: Mosquitto) -> None:
    server = Collector(acl_broker.port, [f"{ROOT}/+/#"], client_id="srv", username="edgefleet-server",
                       password="srv")
    tel = Telemetry(agent_config(tmp_path / "s", acl_broker.port, mqtt={"username": "cam-01", "password": "pw1"}),
                    hw={}, agent_version="t")
    intruder = Telemetry(agent_config(tmp_path / "i", acl_broker.port, device_id="cam-01",
                                      mqtt={"username": "cam-02", "password": "pw2"}), hw={}, agent_version="t")
    wrong = Telemetry(agent_config(tmp_path / "w", acl_broker.port, device_id="cam-03",
                                   mqtt={"username": "cam-03", "password": "nope"}), hw={}, agent_version="t")
    try:
        tel.start()
        wrong.start()
        wait_until(lambda: tel.connected)
        server.send(f"{ROOT}/cam-01/commands", {"id": "k1", "type": "set_results", "args": {"enabled": True}})
        ack = server.wait_for("events", lambda d: d)[0]
        assert ack["type"] == "command.ack" and ack["id"] == "k1"
        assert server.wait_for("status")[0]["online"] is True
        intruder.start()  # cam-02's credentials, cam-01's topics: the broker refuses every message
        wait_until(lambda: intruder.connected)
        intruder.event("update.committed")
        wait_until(lambda: intruder.stats["rejected"] >= 1 and intruder.stats["queued"] == 0)
        assert not wrong.connected and "not authorized" in (wrong._link.last_error or "").lower()
        assert [e["id"] for e in server.on("events")] == ["k1"]
    finally:
        for t in (tel, intruder, wrong):
            t.stop(timeout=1.0)
        server.close()


def test_falls_back_to_311_on_a_broker_without_mqtt5(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    amqtt = Path(sys.executable).with_name("amqtt")
    proc = subprocess.Popen([str(amqtt), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tel = Telemetry(agent_config(tmp_path, port, mqtt={"connect_timeout_s": 1.5}), hw={}, agent_version="t")
    try:
        wait_for_port(port, timeout=20)
        tel.start()
        wait_until(lambda: tel.connected, timeout=10)
        assert tel.stats["protocol"] == "3.1.1"
        tel.event("runtime.fallback")
        wait_until(lambda: tel.stats["sent"] == 1)
    finally:
        tel.stop(timeout=1.0)
        proc.terminate()
        proc.wait(10)

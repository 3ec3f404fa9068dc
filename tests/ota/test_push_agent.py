"""Real agents (UpdateClient + the MQTT telemetry service) polling every 600 s: a pushed rollout reaches them
within seconds, and a flood of check_update commands costs at most a couple of checks (coalesced)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.ota.client import UpdateClient
from edgefleet.agent.telemetry.service import Telemetry
from edgefleet.agent.wire import Command, device_topic
from tests.ota.helpers import device_reports, ort_loader, push, roll_out
from tests.ota.rig import Traffic, agent_config
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

POLL_S = 600.0


@pytest.fixture(scope="module")
def mqtt_server(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("srv"), broker.port,
                           overrides={"rollouts": {"push_spread_s": 1.0}})
    try:
        yield running
    finally:
        running.stop()


class Agent:
    """The agent's update client and MQTT side, as the daemon wires them (no camera, test traffic)."""

    def __init__(self, server: RunningServer, broker: Mosquitto, tmp_path: Path, device_id: str) -> None:
        self.config = agent_config(server, tmp_path / device_id, device_id)
        self.config.server.poll_interval_s = POLL_S
        self.config.mqtt.enabled, self.config.mqtt.host, self.config.mqtt.port = True, "127.0.0.1", broker.port
        self.host = ModelHost()
        self.telemetry = Telemetry(self.config, hw={}, agent_version="test")
        self.client = UpdateClient(self.config, self.host, self.telemetry, ort_loader)

    def start(self) -> None:
        self.telemetry.start()
        self.client.start()

    def stop(self) -> None:
        self.client.stop(timeout=10)
        self.telemetry.stop(timeout=5)


@pytest.fixture
def agents(mqtt_server: RunningServer, broker: Mosquitto, tmp_path: Path) -> Iterator[list[Agent]]:
    started = [Agent(mqtt_server, broker, tmp_path, f"push-{i}") for i in range(2)]
    for agent in started:
        agent.start()
    try:
        wait_until(lambda: all(a.client.cycles >= 1 and a.telemetry.connected for a in started), timeout=30)
        yield started
    finally:
        for agent in started:
            agent.stop()


def test_a_pushed_rollout_reaches_agents_that_poll_every_ten_minutes(mqtt_server: RunningServer,
                                                                     agents: list[Agent],
                                                                     models: dict[str, Path]) -> None:
    v1 = push(mqtt_server.url, mqtt_server.admin(), "pushed", models["v1"])
    with Traffic(agents[0].host), Traffic(agents[1].host):
        doc = roll_out(mqtt_server.url, mqtt_server.admin(), "pushed", v1["version"],
                       [a.config.device_id for a in agents])
        # the next poll is 8 to 12 minutes away: only the push can bring it in this time
        wait_until(lambda: set(device_reports(mqtt_server.url, mqtt_server.admin(), doc["id"]).values())
                   == {"committed"}, timeout=60)
    assert all(a.host.meta is not None and a.host.meta.version == v1["version"] for a in agents)


def test_a_check_update_flood_is_coalesced(agents: list[Agent], broker: Mosquitto) -> None:
    agent = agents[0]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        before, other = agent.client.cycles, agents[1].client.cycles
        topic = device_topic(agent.config.device_id, "commands")
        for index in range(50):
            command = Command(id=f"flood-{index}", type="check_update")
            publisher.publish(topic, command.model_dump_json(), qos=1).wait_for_publish(5)
        # the first check runs once the minimum interval since the last one has passed, the rest coalesce
        # into it or into one more check a minimum interval later
        wait_until(lambda: agent.client.cycles > before, timeout=30)
        time.sleep(agent.config.server.check_min_interval_s * 2.5)
        assert 1 <= agent.client.cycles - before <= 2
        assert agents[1].client.cycles == other  # the other device was not woken
    finally:
        publisher.loop_stop()
        publisher.disconnect()

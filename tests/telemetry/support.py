"""Shared by the telemetry tests: an agent config for a broker, and a subscriber that collects messages."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.config import AgentConfig
from tests.support.net import wait_until

ROOT = "edgefleet/v1/devices"


def agent_config(state_dir: Path, port: int, device_id: str = "cam-01", **sections: Any) -> AgentConfig:
    mqtt_cfg = {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4,
                "connect_timeout_s": 3.0}
    mqtt_cfg.update(sections.pop("mqtt", {}))
    telemetry = {"interval_s": 3600.0}
    telemetry.update(sections.pop("telemetry", {}))
    return AgentConfig.model_validate({"device_id": device_id, "state_dir": str(state_dir), "mqtt": mqtt_cfg,
                                       "telemetry": telemetry, "api": {"listen": None}, **sections})


class Collector:
    """A real MQTT client that records every JSON message on ``topics``, in arrival order."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "collector", persistent: bool = False,
                 username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 1)
        self.topics = topics

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            self._subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("collector did not subscribe")

    def on(self, leaf: str, device_id: str = "cam-01") -> list[dict[str, Any]]:
        topic = f"{ROOT}/{device_id}/{leaf}"
        with self._lock:
            return [doc for t, doc, _ in self.messages if t == topic]

    def wait_for(self, leaf: str, predicate: Any = lambda docs: docs, timeout: float = 10.0,
                  device_id: str = "cam-01") -> list[dict[str, Any]]:
        wait_until(lambda: predicate(self.on(leaf, device_id)), timeout=timeout)
        return self.on(leaf, device_id)

    def send(self, topic: str, doc: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def events_of(docs: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("type") == type_]

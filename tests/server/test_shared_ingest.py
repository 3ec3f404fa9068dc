"""Telemetry split across two replicas by the shared subscription, with one replica SIGKILLed mid-stream
and restarted, and the other stopped cleanly without coming back: every message is stored, once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._fleet.scaleout import MOSQUITTO_CONF, psycopg_url
from tests.support.broker import Mosquitto
from tests.support.cluster import start_cluster
from tests.support.databases import database_url, postgres_reason
from tests.support.net import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(postgres_reason() is not None, reason=str(postgres_reason()))]
RATE = 400  # messages per second, over 40 devices


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with database_url("postgresql", tmp_path) as url:
        yield url


def stored(url: str) -> tuple[int, int]:
    with psycopg.connect(psycopg_url(url)) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def ingested(url: str, token: str) -> float:
    text = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('edgefleet_ingest_messages_total{kind="telemetry"}'))


class Publisher(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        last = None
        while not self.stop.is_set():
            device, seq = f"dev-{self.sent % 40:02d}", self.sent // 40 + 1
            body = {"seq": seq, "ts": time.time(), "model": {"name": "m", "version": 1}, "runtime": "onnxruntime",
                    "inference": {"count": 10, "errors": 0, "latency_ms": {"p50": 2.0, "p95": 3.0}, "fps": 10.0},
                    "system": {"cpu_pct": 20.0}}
            last = self.client.publish(f"edgefleet/v1/devices/{device}/telemetry", json.dumps(body), qos=1)
            self.sent += 1
            time.sleep(max(0.0, started + self.sent / RATE - time.monotonic()))
        if last is not None:
            last.wait_for_publish(30)  # every message acknowledged by the broker
        self.client.loop_stop()
        self.client.disconnect()


def test_no_telemetry_is_lost_or_stored_twice_when_a_replica_dies_mid_stream(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", extra_conf=MOSQUITTO_CONF).start()
    cluster = start_cluster(tmp_path, 2, database_url=pg_url, mqtt_port=broker.port, proxy=False)
    publisher = Publisher(broker.port)
    try:
        wait_until(lambda: all(requests.get(r.url + "/healthz", timeout=2).json()["mqtt"]["connected"]
                               for r in cluster.replicas), timeout=20)
        for index in range(40):  # the server stores telemetry of enrolled ids only
            cluster.replicas[index % 2].enroll(f"dev-{index:02d}")
        publisher.start()
        time.sleep(2.0)
        shares = [ingested(r.url, cluster.admin_token) for r in cluster.replicas]
        assert all(share > 0 for share in shares), f"the stream is not split: {shares}"
        cluster.kill(0)  # what was in flight to it, or queued in it, is held in its session by the broker
        time.sleep(2.0)
        cluster.restart(0)
        time.sleep(2.0)
        cluster.replicas[1].stop()  # a clean stop hands its share over: nothing waits for it to come back
        time.sleep(2.0)
        publisher.stop.set()
        publisher.join(60)
        sent = publisher.sent
        try:
            wait_until(lambda: stored(pg_url)[1] >= sent, timeout=60, interval=0.5)
            time.sleep(1.0)
        except TimeoutError:
            pass  # the assertion says how many are missing
        rows, distinct = stored(pg_url)
        assert (rows, distinct) == (sent, sent), f"sent {sent}, stored {rows} rows, {distinct} distinct"
    finally:
        publisher.stop.set()
        cluster.stop()
        broker.stop()

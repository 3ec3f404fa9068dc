"""Telemetry ingestion rate: a publisher process floods a real Mosquitto with Telemetry (QoS 1);
the server's Ingestor (paho + batched writer) stores it in SQLite and PostgreSQL.

Figures: stored messages/s (first publish to last row committed), and a bare baseline in the
same run: the same messages received by a paho subscriber that stores nothing.

    .venv/bin/python benchmarks/ingest_rate.py --messages 30000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def publish(port: int, messages: int, devices: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    last = None
    for i in range(messages):
        device, seq = f"dev-{i % devices:04d}", i // devices
        body = {"seq": seq, "ts": 1_700_000_000.0 + i * 0.001, "model": {"name": "m", "version": 1},
                "runtime": "onnxruntime", "inference": {"count": 100, "errors": 0,
                                                        "latency_ms": {"p50": 2.0, "p95": 3.0 + i % 7}, "fps": 10.0},
                "system": {"cpu_pct": 20.0 + i % 50, "rss_mb": 80.0}}
        last = client.publish(f"edgefleet/v1/devices/{device}/telemetry", json.dumps(body), qos=1)
    if last is not None:
        last.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def baseline(port: int, messages: int, devices: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = 0
    done = threading.Event()

    def on_message(*_args: object) -> None:
        nonlocal got
        got += 1
        if got >= messages:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("edgefleet/v1/devices/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(0.3)
    started = time.perf_counter()
    proc = mp.Process(target=publish, args=(port, messages, devices))
    proc.start()
    done.wait(180)
    elapsed = time.perf_counter() - started
    proc.join(30)
    client.loop_stop()
    client.disconnect()
    return got / elapsed


def ingest(port: int, url: str, messages: int, devices: int) -> dict[str, float]:
    from sqlalchemy import func, select

    from server.config import MqttSection, TelemetrySection
    from server.db import Database, migrate
    from server.db.models import Telemetry
    from server.ingest import Ingestor

    db = Database(url)
    migrate(db.engine)
    ingestor = Ingestor(db, MqttSection(host="127.0.0.1", port=port), TelemetrySection(batch_max=2000,
                                                                                        batch_interval_s=0.2))
    ingestor.start()
    deadline = time.monotonic() + 10
    while not ingestor.stats.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.perf_counter()
    proc = mp.Process(target=publish, args=(port, messages, devices))
    proc.start()
    stored = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with db.session() as session:
            stored = int(session.scalar(select(func.count()).select_from(Telemetry)) or 0)
        if stored >= messages:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    proc.join(30)
    ingestor.stop()
    db.dispose()
    return {"stored": stored, "seconds": elapsed, "msgs_per_s": stored / elapsed, "batches": ingestor.stats.batches}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    from tests.support.broker import Mosquitto
    from tests.support.databases import database_url, postgres_reason

    results: dict[str, object] = {"messages": args.messages, "devices": args.devices}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp), extra_conf="max_queued_messages 1000000\nmax_inflight_messages 1000\n").start()
        try:
            results["baseline_subscriber_msgs_per_s"] = baseline(broker.port, args.messages, args.devices)
            kinds = ["sqlite"] + ([] if args.skip_postgres or postgres_reason() else ["postgresql"])
            for kind in kinds:
                with database_url(kind, Path(tmp)) as url:
                    results[kind] = ingest(broker.port, url, args.messages, args.devices)
        finally:
            broker.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

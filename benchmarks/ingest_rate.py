"""Telemetry ingestion rate: a publisher process floods a real Mosquitto with Telemetry (QoS 1);
the server's Ingestor (paho + batched writer) validates it and stores it in SQLite and PostgreSQL.

Figures, all measured in the same run:
- the ceiling: the same messages received by a bare paho subscriber that stores nothing;
- per database, end to end: stored messages/s (first publish to last row committed) with validation
  against the wire contract (what the server runs) and without it (``BatchWriter(validate=False)``:
  json.loads and the row, as before issue 14), in alternating rounds; the validation's cost is
  1 - (median with) / (median without);
- per database, the writer alone: the same messages handed to ``BatchWriter.write`` in batches of
  ``batch_max`` from memory (no broker, no publisher), with and without validation, alternating: what the
  write path can take, and the validation's cost where it is not hidden behind the MQTT ceiling.

    .venv/bin/python benchmarks/ingest_rate.py --messages 30000 [--rounds 3] [--writer-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_VALIDATION_COST = 0.10


def document(i: int, devices: int, seq_base: int, now: float) -> tuple[str, bytes]:
    device, seq = f"dev-{i % devices:04d}", seq_base + i // devices
    body = {"seq": seq, "epoch": 1, "ts": now - 60 + i * 0.001, "model": {"name": "m", "version": 1},
            "runtime": "onnxruntime", "inference": {"count": 100, "errors": 0,
                                                    "latency_ms": {"p50": 2.0, "p95": 3.0 + i % 7}, "fps": 10.0},
            "system": {"cpu_pct": 20.0 + i % 50, "rss_mb": 80.0}}
    return f"edgefleet/v1/devices/{device}/telemetry", json.dumps(body).encode()


def publish(port: int, messages: int, devices: int, seq_base: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    last = None
    now = time.time()
    for i in range(messages):
        topic, body = document(i, devices, seq_base, now)
        last = client.publish(topic, body, qos=1)
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
    proc = mp.Process(target=publish, args=(port, messages, devices, 0))
    proc.start()
    done.wait(180)
    elapsed = time.perf_counter() - started
    proc.join(30)
    client.loop_stop()
    client.disconnect()
    return got / elapsed


def enroll(db: Any, devices: int) -> None:
    from edgefleet.server.crud import devices as device_crud

    with db.session() as session:  # the server stores only enrolled ids
        for i in range(devices):
            device_crud.enroll_device(session, device_id=f"dev-{i:04d}", device_class=None, tags=[], hw={})


def ingest(port: int, db: Any, messages: int, devices: int, *, validate: bool, seq_base: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from edgefleet.server.config import MqttSection, TelemetrySection
    from edgefleet.server.db.models import Telemetry
    from edgefleet.server.ingest import Ingestor

    def stored() -> int:
        with db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Telemetry)) or 0)

    before = stored()
    ingestor = Ingestor(db, MqttSection(host="127.0.0.1", port=port), TelemetrySection(batch_max=2000,
                                                                                        batch_interval_s=0.2))
    ingestor.writer.validate = validate
    ingestor.start()
    deadline = time.monotonic() + 10
    while not ingestor.stats.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.perf_counter()
    proc = mp.Process(target=publish, args=(port, messages, devices, seq_base))
    proc.start()
    count = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        count = stored() - before
        if count >= messages:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    proc.join(30)
    ingestor.stop()
    return {"validate": validate, "stored": count, "seconds": round(elapsed, 3),
            "msgs_per_s": round(count / elapsed, 1), "batches": ingestor.stats.batches,
            "rejected": ingestor.stats.invalid}


def write_only(db: Any, messages: int, devices: int, *, validate: bool, seq_base: int) -> dict[str, Any]:
    from edgefleet.server.config import TelemetrySection
    from edgefleet.server.ingest import BatchWriter, IngestStats

    section = TelemetrySection(batch_max=2000)
    now = time.time()
    batch = [(*document(i, devices, seq_base, now), now) for i in range(messages)]
    writer = BatchWriter(db, section, IngestStats(), validate=validate)
    started, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, messages, section.batch_max):
        writer.write(batch[start:start + section.batch_max])
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
    assert writer.stats.written == messages, (writer.stats.written, writer.stats.rejections.by_reason)
    # the writer thread's own CPU per message (the database's work is in its own processes): what one
    # Python process, its GIL shared with the MQTT subscriber, pays per message whatever else runs here
    return {"validate": validate, "stored": writer.stats.written, "seconds": round(elapsed, 3),
            "msgs_per_s": round(messages / elapsed, 1), "cpu_us_per_msg": round(cpu / messages * 1e6, 2)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    checked = statistics.median(r["msgs_per_s"] for r in runs if r["validate"])
    plain = statistics.median(r["msgs_per_s"] for r in runs if not r["validate"])
    cost = 1 - checked / plain
    found = {"with_validation_msgs_per_s": round(checked, 1), "without_validation_msgs_per_s": round(plain, 1),
             "validation_cost": round(cost, 4), "within_budget": cost <= MAX_VALIDATION_COST, "runs": runs}
    if all("cpu_us_per_msg" in r for r in runs):
        cpu_checked = statistics.median(r["cpu_us_per_msg"] for r in runs if r["validate"])
        cpu_plain = statistics.median(r["cpu_us_per_msg"] for r in runs if not r["validate"])
        found.update(cpu_us_per_msg_with=cpu_checked, cpu_us_per_msg_without=cpu_plain,
                     validation_cpu_cost=round(cpu_checked / cpu_plain - 1, 4))
    return found


def measure(port: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgefleet.server.db import Database, migrate

    db = Database(url)
    migrate(db.engine)
    enroll(db, args.devices)
    end_to_end: list[dict[str, Any]] = []
    writer: list[dict[str, Any]] = []
    seq_base = 0
    for _ in range(0 if args.writer_only else args.rounds):
        for validate in (True, False):
            end_to_end.append(ingest(port, db, args.messages, args.devices, validate=validate, seq_base=seq_base))
            seq_base += args.messages // args.devices + 1
    for _ in range(args.rounds):
        for validate in (True, False):
            writer.append(write_only(db, args.messages, args.devices, validate=validate, seq_base=seq_base))
            seq_base += args.messages // args.devices + 1
    db.dispose()
    found = {"writer_only": summary(writer)}
    if end_to_end:
        found["end_to_end"] = summary(end_to_end)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with and without validation")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--writer-only", action="store_true",
                        help="only the writer from memory (no broker): for a machine too loaded for the MQTT path")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    from tests.support.broker import Mosquitto
    from tests.support.databases import database_url, postgres_reason

    results: dict[str, Any] = {"messages": args.messages, "devices": args.devices, "rounds": args.rounds,
                               "max_validation_cost": MAX_VALIDATION_COST}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp), extra_conf="max_queued_messages 1000000\nmax_inflight_messages 1000\n").start()
        try:
            if not args.writer_only:
                results["baseline_subscriber_msgs_per_s"] = round(baseline(broker.port, args.messages, args.devices),
                                                                  1)
            kinds = ["sqlite"] + ([] if args.skip_postgres or postgres_reason() else ["postgresql"])
            for kind in kinds:
                with database_url(kind, Path(tmp)) as url:
                    results[kind] = measure(broker.port, url, args)
        finally:
            broker.stop()
    if args.json:
        print(json.dumps(results))
        return
    ceiling = results.get("baseline_subscriber_msgs_per_s")
    print(f"{args.messages} messages from {args.devices} devices, QoS 1 through Mosquitto"
          + (f"; bare subscriber (ceiling): {ceiling:,.0f} msg/s" if ceiling else "")
          + f"; medians of {args.rounds} alternating rounds")
    print(f"{'database':<12}{'path':<12}{'validated msg/s':>17}{'unvalidated msg/s':>19}{'validation cost':>17}")
    for kind in ("sqlite", "postgresql"):
        for path in ("end_to_end", "writer_only"):
            if kind in results and path in results[kind]:
                r = results[kind][path]
                cpu = (f"   writer CPU {r['cpu_us_per_msg_with']:.1f} vs {r['cpu_us_per_msg_without']:.1f} us/msg "
                       f"({r['validation_cpu_cost']:+.1%})" if "validation_cpu_cost" in r else "")
                print(f"{kind:<12}{path:<12}{r['with_validation_msgs_per_s']:>17,.0f}"
                      f"{r['without_validation_msgs_per_s']:>19,.0f}{r['validation_cost']:>16.1%}"
                      f"{'' if r['within_budget'] else '  (over the 10 % budget)'}{cpu}")


if __name__ == "__main__":
    main()

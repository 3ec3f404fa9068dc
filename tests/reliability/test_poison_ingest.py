"""One device's poison messages cost only that device (issue 14): every kind of malformed or hostile MQTT
message, published on the device's own topics in the middle of another device's stream, through a real
Mosquitto into the real server on SQLite and on PostgreSQL. Exact row counts, exact rejection counts per
reason, one log line per device per minute, the reason on the device's page; ids that are not enrolled
store nothing; absurd timestamps are replaced and flagged; a retained poison status does it again after
every server restart and still costs no one else."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from edgefleet.server.config import load_server_config
from edgefleet.server.db import Database
from edgefleet.server.db.models import Device, DeviceEvent, LatencyHistRow, Telemetry
from tests.reliability.support import restart_server
from tests.support.broker import Mosquitto
from tests.support.databases import database_url, postgres_reason
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

ROOT = "edgefleet/v1/devices"
PG_SKIP = postgres_reason()


def telemetry(seq: int, *, ts: float | None = None, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"seq": seq, "epoch": 7, "ts": time.time() - 1 if ts is None else ts,
                           "model": {"name": "det", "version": 3, "sha256": "ab" * 32}, "runtime": "onnxruntime",
                           "inference": {"count": 10, "errors": 0, "latency_ms": {"p50": 1.0, "p95": 2.0}, "fps": 5.0,
                                         "latency_hist": {"offset": 170, "counts": [3, 0, 4, 3]}},
                           "system": {"cpu_pct": 12.0, "rss_mb": 50.0}}
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


BIRTH = {"online": True, "session": 1, "epoch": 7, "agent_version": "0.1", "model": {"name": "det", "version": 3}}

# (what, leaf, payload, the reason it is refused with)
POISON: list[tuple[str, str, bytes, str]] = [
    ("telemetry seq 2^63", "telemetry", raw(telemetry(2**63)), "out_of_range"),
    ("inference.count 2^64", "telemetry", raw(telemetry(900, inference__count=2**64)), "out_of_range"),
    ("ts NaN", "telemetry", raw(telemetry(901)).replace(b'"ts": ', b'"ts": NaN, "x": '), "out_of_range"),
    ("status session 'abc'", "status", raw({**BIRTH, "session": "abc"}), "invalid"),
    ("status model.name an object", "status", raw({**BIRTH, "model": {"name": {"a": 1}}}), "invalid"),
    ("event seq 2^63", "events", raw({"seq": 2**63, "ts": time.time(), "type": "update.committed"}), "out_of_range"),
    ("payload of 300 KB", "telemetry", raw(telemetry(902, drift={"blob": "x" * 300_000})), "too_large"),
    ("drift nested 40 deep", "telemetry", raw(telemetry(903, drift=nested(40))), "too_deep"),
    ("JSON nested 100 000 deep", "telemetry", b'{"seq": 904, "ts": 1, "drift": ' + b"[" * 100_000 + b"]" * 100_000
     + b"}", "too_deep"),
    ("invalid UTF-8", "telemetry", raw(telemetry(905, runtime="RT")).replace(b'"RT"', b'"\xff\xfe"'), "not_json"),
    ("a lone surrogate", "telemetry", raw(telemetry(906, runtime="RT")).replace(b'"RT"', b'"\\ud800"'), "not_json"),
    ("not JSON", "telemetry", b"{seq: 1,", "not_json"),
    ("NUL in model.name", "telemetry", raw(telemetry(907, model__name="a\x00b")), "invalid"),
    ("runtime of 5000 chars", "telemetry", raw(telemetry(908, runtime="r" * 5000)), "too_large"),
    ("model.version 2^31", "telemetry", raw(telemetry(909, model__version=2**31)), "out_of_range"),
    ("count true", "telemetry", raw(telemetry(910, inference__count=True)), "invalid"),
    ("p95 1e400", "telemetry", raw(telemetry(911)).replace(b'"p95": 2.0', b'"p95": 1e400'), "out_of_range"),
    ("event fields nested 40 deep", "events", raw({"seq": 912, "ts": time.time(), "type": "x", "f": nested(40)}),
     "too_deep"),
    ("event type of 200 chars", "events", raw({"seq": 913, "ts": time.time(), "type": "t" * 200}), "too_large"),
    # latency histograms (inference.latency_hist): bounded buckets and counts, consistent with inference.count
    ("latency_hist of 600 buckets", "telemetry",
     raw(telemetry(914, inference__latency_hist={"offset": 0, "counts": [0] * 600})), "too_large"),
    ("latency_hist past the last bucket", "telemetry",
     raw(telemetry(915, inference__latency_hist={"offset": 505, "counts": [1, 1, 1]})), "too_large"),
    ("latency_hist count -1", "telemetry",
     raw(telemetry(916, inference__latency_hist={"offset": 3, "counts": [2, -1]})), "out_of_range"),
    ("latency_hist count 2^40", "telemetry",
     raw(telemetry(917, inference__latency_hist={"offset": 3, "counts": [2**40]})), "out_of_range"),
    ("latency_hist counts a string", "telemetry",
     raw(telemetry(918, inference__latency_hist={"offset": 3, "counts": "1,2"})), "invalid"),
    ("latency_hist over inference.count", "telemetry",
     raw(telemetry(919, inference__latency_hist={"offset": 3, "counts": [6, 5]})), "invalid"),
    ("a list, not a document", "telemetry", b"[1, 2, 3]", "invalid"),
]
GOOD_N, GOOD_EVENTS = 52, 13  # two poison messages every four genuine ones: all of POISON


class Publisher:
    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0

    def send(self, device: str, leaf: str, payload: bytes | dict[str, Any], retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else raw(payload)
        self.client.publish(f"{ROOT}/{device}/{leaf}", body, qos=1, retain=retain).wait_for_publish(10)
        self.sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres, pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Mosquitto, RunningServer]]:
    base = tmp_path_factory.mktemp(f"poison-{request.param}")
    (base / "broker").mkdir()
    broker = Mosquitto(base / "broker", persistence=True).start()
    with database_url(request.param, base) as url:
        # a long batch window: the poison lands in the same batches as the good device's rows
        server = start_server(base, mqtt_port=broker.port, database_url=url,
                              overrides={"telemetry": {"batch_interval_s": 1.0, "batch_max": 5000}})
        try:
            yield broker, server
        finally:
            server.stop()
            broker.stop()


def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(server.url + "/metrics", headers=server.admin(), timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rejected(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, int]:
    return {dict(labels)["reason"]: int(v) for (name, labels), v in samples.items()
            if name == "edgefleet_ingest_rejected_total"}


def settle(server: RunningServer, published: int, before: float) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                          float]:
    """Wait until the server received ``published`` more messages and wrote every batch."""
    def done() -> Any:
        now = scrape(server)
        received = now[("edgefleet_ingest_received_total", ())]
        if received - before >= published and now[("edgefleet_ingest_queue_depth", ())] == 0 and \
                now[("edgefleet_ingest_batch_messages_total", ())] == received:
            return now
        return None

    found = wait_until(done, timeout=60, interval=0.2)
    assert isinstance(found, dict)
    return found


def database(server: RunningServer) -> Database:
    return Database(load_server_config(server.config_path).database_url)


def counts(server: RunningServer) -> dict[str, dict[str, int]]:
    db = database(server)
    try:
        with db.session() as session:
            tele = {str(d): int(n) for d, n in session.execute(
                select(Telemetry.device_id, func.count()).group_by(Telemetry.device_id))}
            events = {str(d): int(n) for d, n in session.execute(
                select(DeviceEvent.device_id, func.count()).group_by(DeviceEvent.device_id))}
            devices = {d.id for d in session.scalars(select(Device))}
            hists = {str(d): int(n) for d, n in session.execute(
                select(LatencyHistRow.device_id, func.count()).group_by(LatencyHistRow.device_id))}
    finally:
        db.dispose()
    return {"telemetry": tele, "events": events, "devices": dict.fromkeys(devices, 1), "latency": hists}


def test_poison_in_another_devices_stream_costs_that_device_nothing(stack: tuple[Mosquitto, RunningServer]) -> None:
    broker, server = stack
    for device in ("good-01", "bad-01"):
        server.enroll(device)
    before = scrape(server)
    good, bad = Publisher(broker.port, "good-01"), Publisher(broker.port, "bad-01")
    bad_valid = 0
    try:
        good.send("good-01", "status", BIRTH, retain=True)
        poison = iter(POISON)
        for seq in range(1, GOOD_N + 1):
            good.send("good-01", "telemetry", telemetry(seq))
            if seq % 4 == 0:  # one poison message every four genuine ones, and the bad device's own good ones
                good.send("good-01", "events", {"seq": seq // 4, "epoch": 7, "ts": time.time(), "type": "x.y"})
                for _what, leaf, payload, _reason in (next(poison), next(poison)):
                    bad.send("bad-01", leaf, payload)
                bad.send("bad-01", "telemetry", telemetry(seq))
                bad_valid += 1
        # what is valid but absurd is stored with the receive time, flagged
        bad.send("bad-01", "events", {"seq": 1, "ts": 1e300, "type": "update.committed"})
        bad.send("bad-01", "telemetry", telemetry(1000, ts=time.time() + 86_400))
        # ids that are not enrolled store nothing, whatever they send
        for leaf, payload in (("status", BIRTH), ("telemetry", telemetry(1)), ("events", {"seq": 1, "ts": 1.0,
                                                                                          "type": "x"})):
            bad.send("ghost-01", leaf, payload)
        published = good.sent + bad.sent
    finally:
        good.close()
        bad.close()
    after = settle(server, published, before[("edgefleet_ingest_received_total", ())])

    stored = counts(server)
    assert stored["telemetry"].get("good-01") == GOOD_N  # every genuine row, none lost
    assert stored["events"].get("good-01") == GOOD_EVENTS
    assert stored["telemetry"].get("bad-01") == bad_valid + 1 and stored["events"].get("bad-01") == 1
    assert stored["latency"] == {"good-01": GOOD_N, "bad-01": bad_valid + 1}  # one histogram per stored message
    assert "ghost-01" not in stored["telemetry"] and "ghost-01" not in stored["events"]
    assert "ghost-01" not in stored["devices"]
    want: dict[str, int] = {}
    for _what, _leaf, _payload, reason in POISON:
        want[reason] = want.get(reason, 0) + 1
    want["unenrolled"] = 3
    got = {reason: n - rejected(before).get(reason, 0) for reason, n in rejected(after).items()}
    assert {k: v for k, v in got.items() if v} == want
    assert after[("edgefleet_ingest_ts_replaced_total", ())] - before[("edgefleet_ingest_ts_replaced_total", ())] == 2

    device = requests.get(f"{server.url}/v1/devices/bad-01", headers=server.admin(), timeout=5).json()
    assert device["ingest"]["rejected"] == len(POISON) and device["ingest"]["ts_replaced"] == 2
    assert device["ingest"]["last_reason"].endswith("(invalid)")  # the last poison: a list, not a document
    assert requests.get(f"{server.url}/v1/devices/good-01", headers=server.admin(), timeout=5).json()["online"]
    page = requests.get(f"{server.url}/devices/bad-01", headers=server.admin(), timeout=10)
    assert page.status_code == 200 and f"<dd>{len(POISON)}</dd>" in page.text
    events = requests.get(f"{server.url}/v1/devices/bad-01/events", headers=server.admin(), timeout=5).json()["events"]
    (absurd,) = events
    assert absurd["ts_replaced"] and abs(absurd["ts"] - time.time()) < 120 and absurd["payload"]["ts"] == 1e300
    rows = requests.get(f"{server.url}/v1/devices/bad-01/telemetry", headers=server.admin(), timeout=5).json()
    future = [r for r in rows["telemetry"] if r["seq"] == 1000]
    assert future[0]["ts_replaced"] and future[0]["ts"] < time.time() + 1  # not ahead of the real rows
    assert {e["epoch"]: e["messages"] for e in rows["epochs"]} == {7: bad_valid + 1, 0: 1}  # the event: no epoch
    log = server.log()
    assert log.count("from device 'bad-01'") == 1, log[-3000:]  # one line a minute, however many
    assert log.count("from ids that are not enrolled") == 1
    print(f"poison ({server.config_path.parent.parent.name}): {len(POISON)} poison messages among {GOOD_N} "
          f"telemetry + {GOOD_EVENTS} events of good-01: good-01 kept {GOOD_N}/{GOOD_N} rows and "
          f"{GOOD_EVENTS}/{GOOD_EVENTS} events; bad-01 kept its {bad_valid + 1} valid rows; rejected {want}")


def test_a_retained_poison_status_costs_no_one_else_after_a_restart(
        stack: tuple[Mosquitto, RunningServer]) -> None:
    broker, server = stack
    for device in ("good-02", "bad-02"):
        server.enroll(device)
    publisher = Publisher(broker.port, "retainer")
    try:
        publisher.send("bad-02", "status", raw({**BIRTH, "session": "abc"}), retain=True)
        publisher.send("good-02", "status", BIRTH, retain=True)
        wait_until(lambda: requests.get(f"{server.url}/v1/devices/good-02", headers=server.admin(), timeout=5)
                   .json()["model_version"] == 3, timeout=20)
        server.stop()
        # while the server is down, good-02 reconnects with a new model: only the retained birth tells
        publisher.send("good-02", "status", {**BIRTH, "session": 2, "model": {"name": "det", "version": 4}},
                       retain=True)
    finally:
        publisher.close()
    restart_server(server)
    doc = wait_until(lambda: (d := requests.get(f"{server.url}/v1/devices/good-02", headers=server.admin(),
                                                timeout=5).json())["model_version"] == 4 and d, timeout=30)
    assert isinstance(doc, dict) and doc["online"] and doc["session"] == 2
    samples = settle(server, 0, 0)
    assert rejected(samples).get("invalid", 0) >= 1  # the retained poison, refused again at this start
    bad = requests.get(f"{server.url}/v1/devices/bad-02", headers=server.admin(), timeout=5).json()
    assert bad["ingest"]["rejected"] >= 2 and bad["session"] == -1  # refused before and after the restart

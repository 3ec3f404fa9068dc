"""Latency histograms on the server: ingested through a real Mosquitto into the real server (SQLite and
PostgreSQL), merged exactly by ``GET /v1/latency`` (filters, group_by), the Prometheus histogram on
``/metrics``, and retention folding raw rows into exact hourly merges."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from edgefleet.agent import latency as buckets
from edgefleet.server import latency
from edgefleet.server.config import TelemetrySection
from edgefleet.server.db import Database
from edgefleet.server.db.models import LatencyHistHourly, LatencyHistRow
from edgefleet.server.ingest import BatchWriter, IngestStats
from edgefleet.server.latency_metrics import LE_SECONDS, METRIC
from edgefleet.server.latency_rollup import fold_and_expire
from tests.support.broker import Mosquitto
from tests.support.databases import database_url, migrated_database, postgres_reason
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

ROOT = "edgefleet/v1/devices"
PG_SKIP = postgres_reason()
DATABASES = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres,
                                                        pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])]
# device: (class, tags, version, latency median ms)
FLEET = {"a-01": ("rpi4", ["north"], 1, 2.0), "a-02": ("rpi4", ["south"], 1, 3.0),
         "b-01": ("jetson", ["north"], 2, 8.0), "b-02": ("jetson", ["south"], 2, 12.0)}


def _hist(values_ms: list[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for ms in values_ms:
        k = buckets.bucket_of(ms)
        out[k] = out.get(k, 0) + 1
    return out


def _doc(seq: int, version: int, values_ms: list[float], ts: float | None = None) -> dict[str, Any]:
    return {"seq": seq, "epoch": 1, "ts": time.time() if ts is None else ts,
            "model": {"name": "det", "version": version},
            "inference": {"count": len(values_ms), "errors": 0, "latency_hist": buckets.encode(_hist(values_ms))}}


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.fixture(scope="module", params=DATABASES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Mosquitto, RunningServer]]:
    base = tmp_path_factory.mktemp(f"latency-{request.param}")
    (base / "broker").mkdir()
    broker = Mosquitto(base / "broker").start()
    with database_url(request.param, base) as url:
        server = start_server(base, mqtt_port=broker.port, database_url=url)
        try:
            yield broker, server
        finally:
            server.stop()
            broker.stop()


def _scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(server.url + "/metrics", headers=server.admin(), timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_fleet_percentiles_merge_every_devices_latencies(stack: tuple[Mosquitto, RunningServer]) -> None:
    broker, server = stack
    rng = random.Random(18)
    values: dict[str, list[float]] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="latency-fleet", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    started = time.time()
    try:
        for device, (device_class, tags, version, median) in FLEET.items():
            server.enroll(device, device_class=device_class, tags=tags)
            values[device] = []
            for seq in range(1, 6):  # five messages each, counts since the previous one
                batch = [rng.lognormvariate(math.log(median), 0.4) for _ in range(rng.randrange(50, 150))]
                values[device] += batch
                client.publish(f"{ROOT}/{device}/telemetry", json.dumps(_doc(seq, version, batch)),
                               qos=1).wait_for_publish(10)
            # a duplicate delivery (same epoch and seq) is stored once
            duplicate = json.dumps(_doc(5, version, [1.0]))
            client.publish(f"{ROOT}/{device}/telemetry", duplicate, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    total = sum(len(v) for v in values.values())

    def merged() -> dict[str, Any] | None:
        doc = requests.get(f"{server.url}/v1/latency", headers=server.admin(), timeout=10,
                           params={"since": started - 60, "group_by": "version", "buckets": "true"}).json()
        return doc if doc["total"]["count"] == total else None

    doc = wait_until(merged, timeout=30, interval=0.3)
    assert isinstance(doc, dict)
    everything = [v for vs in values.values() for v in vs]
    for name, q in latency.QUANTILES.items():
        got, exact = doc["total"][f"{name}_ms"], _exact(everything, q)
        assert got == buckets.quantile(_hist(everything), q)  # exactly one histogram of all values
        assert abs(got - exact) <= buckets.ALPHA * exact * (1 + 1e-9)
    assert doc["total"]["devices"] is None and doc["alpha"] == buckets.ALPHA  # the fleet's per-minute sums
    by_version = {g["version"]: g for g in doc["groups"]}
    assert set(by_version) == {1, 2}
    for version in (1, 2):
        mine = [v for d, vs in values.items() if FLEET[d][2] == version for v in vs]
        group = by_version[version]
        assert group["count"] == len(mine)
        assert group["p95_ms"] == buckets.quantile(_hist(mine), 0.95)
        assert buckets.decode(group["buckets"]["offset"], group["buckets"]["counts"]) == _hist(mine)

    def get(**params: Any) -> dict[str, Any]:
        response = requests.get(f"{server.url}/v1/latency", headers=server.admin(), timeout=10,
                                params={"since": started - 60, **params})
        assert response.status_code == 200, response.text
        return dict(response.json())

    north = get(tag="north")
    assert north["total"]["count"] == len(values["a-01"]) + len(values["b-01"]) and north["total"]["devices"] == 2
    # the devices' own histograms (a cohort of all four) give what the per-minute sums gave
    cohort = get(device_id=list(FLEET), group_by="version", buckets="true")
    assert cohort["total"] == {**doc["total"], "devices": 4}
    assert [{**g, "devices": None} for g in cohort["groups"]] == doc["groups"]
    assert [g["devices"] for g in cohort["groups"]] == [2, 2]
    classes = {g["device_class"]: g for g in get(group_by="device_class")["groups"]}
    assert classes["jetson"]["p50_ms"] == buckets.quantile(_hist(values["b-01"] + values["b-02"]), 0.5)
    assert get(device_class="rpi4")["total"]["count"] == len(values["a-01"]) + len(values["a-02"])
    by_class = {g["device_class"]: g for g in get(group_by="device_class", tag="south")["groups"]}
    assert by_class["rpi4"]["p95_ms"] == buckets.quantile(_hist(values["a-02"]), 0.95)
    one = get(device_id="a-02", version=1)
    assert one["total"]["p99_ms"] == buckets.quantile(_hist(values["a-02"]), 0.99)
    assert get(device_id=["a-01", "a-02"])["total"]["count"] == len(values["a-01"]) + len(values["a-02"])
    assert get(device_class="nowhere")["total"] == {"count": 0, "devices": None, "p50_ms": None, "p90_ms": None,
                                                    "p95_ms": None, "p99_ms": None}
    assert get(since=started + 3600, until=started + 7200)["total"]["count"] == 0
    bad = requests.get(f"{server.url}/v1/latency", headers=server.admin(), timeout=10,
                       params={"since": 10, "until": 5})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert requests.get(f"{server.url}/v1/latency", timeout=10).status_code == 401

    # /metrics: the fleet histogram by model version, fed from the ingested histograms
    samples = _scrape(server)
    for version in (1, 2):
        mine = [v for d, vs in values.items() if FLEET[d][2] == version for v in vs]  # the duplicates: once
        labels = (("model", "det"), ("version", str(version)))
        assert samples[(f"{METRIC}_count", labels)] == len(mine)
        for le in LE_SECONDS:
            expected = sum(1 for v in mine if buckets.bucket_value(buckets.bucket_of(v)) / 1000.0 <= le)
            assert samples[(f"{METRIC}_bucket", (("le", repr(le)), *labels))] == expected
        assert samples[(f"{METRIC}_bucket", (("le", "+Inf"), *labels))] == len(mine)


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path, ("d1", "d2")) as database:
        yield database


def test_retention_folds_old_histograms_into_exact_hourly_merges(db: Database) -> None:
    writer = BatchWriter(db, TelemetrySection(retention_days=30), IngestStats())
    now = time.time()
    hour = math.floor((now - 3 * 86400) / 3600) * 3600
    rng = random.Random(5)
    old: dict[str, list[float]] = {"d1": [], "d2": []}
    batch = []
    for device in ("d1", "d2"):
        for seq in range(1, 13):  # every 5 min of one hour, three days ago
            values = [rng.lognormvariate(1.0, 0.5) for _ in range(40)]
            old[device] += values
            batch.append((f"{ROOT}/{device}/telemetry", json.dumps(_doc(seq, 4, values, ts=hour + seq * 290)).encode(),
                          now))
        batch.append((f"{ROOT}/{device}/telemetry", json.dumps(_doc(100, 4, [5.0, 6.0])).encode(), now))  # recent
        batch.append((f"{ROOT}/{device}/telemetry", json.dumps(_doc(101, 4, [])).encode(), now))  # nothing timed
    writer.write(batch)
    writer.write(batch[:5])  # delivered again: stored once, added to the fleet's minutes once
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(LatencyHistRow)) == 26  # the empty ones: no row
        before = latency.device_histograms(session, None, hour - 1, now + 1)
        fleet = latency.fleet_histograms(session, hour - 1, now + 1)
    assert fleet == {None: latency.merge(before.values())}
    assert before["d1"] == latency.merge([_hist(old["d1"]), _hist([5.0, 6.0])])
    with db.session() as session:
        folded, expired = fold_and_expire(session, downsample_before=now - 86400, expire_before=now - 30 * 86400)
    assert (folded, expired) == (2, 0)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(LatencyHistRow)) == 2
        (row,) = session.scalars(select(LatencyHistHourly).where(LatencyHistHourly.device_id == "d2"))
        assert (row.hour, row.model_name, row.model_version, row.count) == (hour, "det", 4, len(old["d2"]))
        after = latency.device_histograms(session, ["d1", "d2"], hour - 1, now + 1)
        assert after == before  # only time resolution is lost
        versions = latency.version_histograms(session, None, hour, hour + 3600)
        assert versions == {4: latency.merge([_hist(old["d1"]), _hist(old["d2"])])}
    # a later run folds more of the same hour into the same row; past retention it goes
    late = [(f"{ROOT}/d1/telemetry", json.dumps(_doc(50, 4, [2.5], ts=hour + 3500)).encode(), now)]
    writer.write(late)
    with db.session() as session:
        fold_and_expire(session, downsample_before=now - 86400, expire_before=now - 30 * 86400)
    with db.session() as session:
        merged = latency.device_histograms(session, ["d1"], hour, hour + 3600)["d1"]
        assert merged == latency.merge([_hist(old["d1"]), _hist([2.5])])
        assert fold_and_expire(session, downsample_before=now - 86400, expire_before=now) == (0, 2)
        assert latency.fleet_histograms(session, hour - 1, now + 1) == {}  # the minutes expire with them

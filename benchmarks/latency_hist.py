"""What mergeable latency histograms (issue 18) cost and how exact they are.

    .venv/bin/python benchmarks/latency_hist.py [--devices 10000] [--db sqlite,postgresql] [--json]

- **bytes**: what ``inference.latency_hist`` adds to one telemetry message (compact JSON, as the agent sends
  it) for a device that timed N inferences of a lognormal latency in an interval, and the whole message.
- **record**: ``LatencyHistogram.record`` per call (ns), against the histogram before issue 18 (32 buckets a
  decade, 7.5 %; its record is kept below as the baseline), in the same run.
- **merge**: merging ``--devices`` device histograms into one and reading p50/p90/p95/p99 (pure Python,
  ``server.latency.merge``/``quantile``).
- **error**: the merged p50/p90/p95/p99 against the exact percentiles of every latency (lognormal, several
  device medians), relative.
- **db** (with ``--db``): ``--db-devices`` devices' ``--messages`` messages each (10 s apart) stored in a fresh
  database through the ingest writer's path (``server.ingest.store_latency``: rows, dedup, per-minute sums) in
  batches of 500, then the merge per version read from the per-minute sums and from the messages, and the
  merge per device, timed; and the ingest writer (``BatchWriter.write``, batches of 500) on whole telemetry
  messages with and without ``latency_hist``, alternating: what the histogram costs ingestion (msg/s, and the
  writer thread's own CPU per message: the steadier figure on a loaded machine; PostgreSQL's is in its processes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent import latency as buckets
from edgefleet.agent.telemetry.histogram import LatencyHistogram
from edgefleet.server import latency


class OldHistogram:
    """The per-interval histogram before issue 18 (agent/telemetry/histogram.py at 3e32f3b): its record."""

    def __init__(self, lo_s: float = 1e-5, hi_s: float = 100.0, per_decade: int = 32) -> None:
        self._log_lo = math.log10(lo_s)
        self._per_decade = per_decade
        n = math.ceil((math.log10(hi_s) - self._log_lo) * per_decade)
        self._last = n + 1
        self._counts = [0] * (n + 2)
        self._lock = threading.Lock()
        self._count = self._errors = 0
        self._min, self._max = math.inf, 0.0

    def record(self, latency_s: float, ok: bool = True) -> None:
        with self._lock:
            self._count += 1
            if not ok:
                self._errors += 1
                return
            if latency_s > 0.0:
                idx = int((math.log10(latency_s) - self._log_lo) * self._per_decade) + 1
                idx = 0 if idx < 0 else (self._last if idx > self._last else idx)
            else:
                idx = 0
            self._counts[idx] += 1
            if latency_s > self._max:
                self._max = latency_s
            if latency_s < self._min:
                self._min = latency_s


def _ns_per_call(hist: Any, values: list[float], repeat: int = 7) -> float:
    record = hist.record

    def run() -> None:
        for v in values:
            record(v, True)

    return statistics.median(timeit.repeat(run, number=1, repeat=repeat)) / len(values) * 1e9


def _device_hist(rng: random.Random, n: int, median_ms: float, sigma: float) -> tuple[dict[int, int], list[float]]:
    values = [rng.lognormvariate(math.log(median_ms), sigma) for _ in range(n)]
    hist: dict[int, int] = {}
    for ms in values:
        k = buckets.bucket_of(ms)
        hist[k] = hist.get(k, 0) + 1
    return hist, values


def bytes_figures(rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (10, 100, 1000, 10_000):
        hist = LatencyHistogram()
        for _ in range(n):
            hist.record(rng.lognormvariate(math.log(0.004), 0.3), True)
        snap = hist.snapshot()
        field = json.dumps({"latency_hist": snap.hist}, separators=(",", ":"))
        out[f"{n}_inferences"] = {"bytes": len(field) - 2, "buckets": len(snap.hist["counts"])}  # type: ignore
    return out


def merge_figures(rng: random.Random, devices: int, per_device: int) -> dict[str, Any]:
    hists, everything = [], []
    for d in range(devices):
        hist, values = _device_hist(rng, per_device, median_ms=2.0 + 8.0 * (d % 7) / 6, sigma=0.35)
        hists.append(hist)
        everything += values
    started = time.perf_counter()
    merged = latency.merge(hists)
    figures = latency.summary(merged)
    merge_s = time.perf_counter() - started
    everything.sort()
    errors = {}
    for name, q in latency.QUANTILES.items():
        exact = everything[max(1, math.ceil(q * len(everything))) - 1]
        errors[name] = abs(figures[f"{name}_ms"] - exact) / exact
    return {"devices": devices, "latencies": len(everything), "merge_ms": round(merge_s * 1000, 2),
            "buckets_merged": len(merged), "relative_error": {k: round(v, 5) for k, v in errors.items()},
            "max_relative_error": round(max(errors.values()), 5), "bound": buckets.ALPHA}


def db_figures(kind: str, devices: int, messages: int, rng: random.Random) -> dict[str, Any]:
    from sqlalchemy import text

    from edgefleet.server.crud import devices as device_crud
    from edgefleet.server.db import Database, migrate
    from edgefleet.server.ingest import store_latency
    from tests.support.databases import database_url

    now = time.time()
    rows = []
    for d in range(devices):
        hist, _ = _device_hist(rng, 100, 2.0 + 8.0 * (d % 7) / 6, 0.35)
        i0, run = buckets.trimmed(hist)
        for seq in range(messages):
            rows.append({"device_id": f"dev-{d:05d}", "epoch": 1, "seq": seq, "ts": now - 600 + seq * 10,
                         "model_name": "det", "model_version": 1 + d % 2, "count": sum(run), "i0": i0,
                         "counts": run})
    rows.sort(key=lambda r: (r["seq"], r["device_id"]))  # as they arrive: every device each interval
    with tempfile.TemporaryDirectory() as tmp, database_url(kind, Path(tmp)) as url:
        db = Database(url)
        migrate(db.engine)
        with db.session() as session:
            for d in range(devices):
                device_crud.enroll_device(session, device_id=f"dev-{d:05d}", device_class=f"class-{d % 3}", tags=[],
                                          hw={})
        started = time.perf_counter()
        for start in range(0, len(rows), 500):  # the writer's default batch_max
            with db.session() as session:
                store_latency(session, rows[start:start + 500])
        insert_s = time.perf_counter() - started
        with db.session() as session:
            stored = session.execute(text("SELECT COUNT(*) FROM latency_hist")).scalar()
            minutes = session.execute(text("SELECT COUNT(*) FROM latency_minute")).scalar()
            t0 = time.perf_counter()
            fleet = latency.fleet_histograms(session, now - 3600, now + 1, group_by="version")
            t1 = time.perf_counter()
            versions = latency.version_histograms(session, None, now - 3600, now + 1)
            t2 = time.perf_counter()
            per_device = latency.device_histograms(session, None, now - 3600, now + 1)
            t3 = time.perf_counter()
        writer = _writer_rates(db, devices, rng)
        db.dispose()
    assert fleet == versions  # the per-minute sums and the devices' own rows agree exactly
    return {**writer, "messages": stored, "minute_rows": minutes, "store_messages_per_s": round(len(rows) / insert_s),
            "by_version_from_minutes_ms": round((t1 - t0) * 1000, 1),
            "by_version_from_messages_ms": round((t2 - t1) * 1000, 1),
            "per_device_ms": round((t3 - t2) * 1000, 1), "versions": len(versions), "devices": len(per_device)}


def _writer_rates(db: Any, devices: int, rng: random.Random, messages: int = 10_000,
                  rounds: int = 2) -> dict[str, Any]:
    """The ingest writer (validation, telemetry rows, histograms, minute sums, device rows) on whole telemetry
    messages with and without ``latency_hist``, alternating rounds: what the histogram costs ingestion."""
    from edgefleet.server.config import TelemetrySection
    from edgefleet.server.ingest import BatchWriter, IngestStats

    writer = BatchWriter(db, TelemetrySection(), IngestStats())
    hists = [buckets.encode(_device_hist(rng, 100, 2.0 + d % 7, 0.35)[0]) for d in range(devices)]
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}  # the writer thread's own CPU per message, µs
    seq = 10_000
    for _ in range(rounds):
        for with_hist in (True, False):
            batch = []
            now = time.time()
            for i in range(messages):
                d = i % devices
                seq += 1 if d == 0 else 0
                inference: dict[str, Any] = {"count": 100, "errors": 0, "latency_ms": {"p50": 2.0, "p95": 3.0},
                                             "fps": 10.0}
                if with_hist:
                    inference["latency_hist"] = hists[d]
                body = {"seq": seq, "epoch": 1, "ts": now - 30, "model": {"name": "det", "version": 1 + d % 2},
                        "runtime": "onnxruntime", "inference": inference, "system": {"cpu_pct": 20.0}}
                batch.append((f"edgefleet/v1/devices/dev-{d:05d}/telemetry", json.dumps(body).encode(), now))
            started, thread_cpu = time.perf_counter(), time.thread_time()
            for start in range(0, len(batch), 500):
                writer.write(batch[start:start + 500])
            rates[with_hist].append(messages / (time.perf_counter() - started))
            cpu[with_hist].append((time.thread_time() - thread_cpu) / messages * 1e6)
    with_rate, without_rate = statistics.median(rates[True]), statistics.median(rates[False])
    return {"writer_msgs_per_s_with_hist": round(with_rate), "writer_msgs_per_s_without_hist": round(without_rate),
            "writer_cost_of_hist": round(1 - with_rate / without_rate, 3),
            "writer_cpu_us_per_msg_with_hist": round(statistics.median(cpu[True]), 1),
            "writer_cpu_us_per_msg_without_hist": round(statistics.median(cpu[False]), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-device", type=int, default=200, help="latencies per device in the merge figures")
    parser.add_argument("--db", default="", help="comma-separated: sqlite, postgresql (a local one, as the tests)")
    parser.add_argument("--db-devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=60, help="messages per device in the database figures")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    rng = random.Random(18)
    values = [rng.lognormvariate(math.log(0.004), 0.5) for _ in range(200_000)]
    new_ns, old_ns = _ns_per_call(LatencyHistogram(), values), _ns_per_call(OldHistogram(), values)
    report: dict[str, Any] = {
        "buckets": {"alpha": buckets.ALPHA, "gamma": buckets.GAMMA, "count": buckets.BUCKETS,
                    "min_ms": buckets.MIN_MS, "max_ms": buckets.MAX_MS},
        "bytes_per_message": bytes_figures(rng),
        "record_ns": {"contract_buckets": round(new_ns, 1), "before_issue_18": round(old_ns, 1),
                      "ratio": round(new_ns / old_ns, 3)},
        "merge": merge_figures(rng, args.devices, args.per_device),
    }
    for kind in filter(None, (k.strip() for k in args.db.split(","))):
        report.setdefault("db", {})[kind] = db_figures(kind, args.db_devices, args.messages, rng)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"buckets: {buckets.BUCKETS} (alpha {buckets.ALPHA}, {buckets.MIN_MS} ms .. {buckets.MAX_MS:.0f} ms)")
    for n, fig in report["bytes_per_message"].items():
        print(f"latency_hist of {n.replace('_', ' ')}: {fig['bytes']} bytes ({fig['buckets']} buckets)")
    rec = report["record_ns"]
    print(f"record: {rec['contract_buckets']} ns/call vs {rec['before_issue_18']} ns before (x{rec['ratio']})")
    m = report["merge"]
    print(f"merge of {m['devices']} device histograms ({m['latencies']} latencies): {m['merge_ms']} ms; "
          f"max relative error of p50/p90/p95/p99 {m['max_relative_error']} (bound {m['bound']})")
    for kind, fig in report.get("db", {}).items():
        print(f"{kind}: ingest writer {fig['writer_msgs_per_s_with_hist']} msg/s with latency_hist, "
              f"{fig['writer_msgs_per_s_without_hist']} without (cost {fig['writer_cost_of_hist']:.1%}); writer "
              f"thread CPU {fig['writer_cpu_us_per_msg_with_hist']} vs {fig['writer_cpu_us_per_msg_without_hist']} "
              "µs/msg")
        print(f"{kind}: {fig['messages']} messages stored at {fig['store_messages_per_s']}/s "
              f"({fig['minute_rows']} minute rows); by version from the minutes "
              f"{fig['by_version_from_minutes_ms']} ms, "
              f"from the messages {fig['by_version_from_messages_ms']} ms; per device {fig['per_device_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

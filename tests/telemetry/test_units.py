"""The parts that need no broker: histogram, backoff, spool limits and persistence, thermal zones, commands."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import edgefleet.agent.telemetry as telemetry_pkg
from edgefleet.agent import latency
from edgefleet.agent.telemetry import (
    Backoff,
    CommandDispatcher,
    LatencyHistogram,
    Spool,
    SystemSampler,
    read_temperature_c,
)
from edgefleet.agent.wire import Command


def test_public_names() -> None:
    assert set(telemetry_pkg.__all__) == {"Backoff", "CommandDispatcher", "LatencyHistogram", "MqttLink", "Spool",
                                          "Summary", "SystemSampler", "Telemetry", "read_temperature_c"}


def test_histogram_percentiles_for_known_latencies() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):  # 1..1000 ms
        hist.record(ms / 1000.0, True)
    for _ in range(7):
        hist.record(5.0, False)  # errors are counted, not timed
    s = hist.snapshot()
    assert (s.count, s.errors) == (1007, 7)
    for got, exact in ((s.p50_s, 0.500), (s.p95_s, 0.950), (s.p99_s, 0.990)):
        assert got is not None and abs(got - exact) <= latency.ALPHA * exact  # one contract bucket
    assert s.max_s == 1.0 and s.min_s == 0.001
    assert s.latency_ms()["max"] == 1000.0
    assert sum(s.hist["counts"]) == 1000  # type: ignore[arg-type]
    empty = hist.snapshot()  # reset by the previous snapshot
    assert (empty.count, empty.p50_s, empty.max_s) == (0, None, None)
    assert empty.hist == {"offset": 0, "counts": []}


def test_histogram_is_fixed_size_and_clamps_to_range() -> None:
    hist = LatencyHistogram()
    buckets = len(hist._counts)
    for value in (0.0, 1e-9, 5e-4, 0.5, 3.0, 1e6):
        hist.record(value, True)
    assert len(hist._counts) == buckets == latency.BUCKETS
    s = hist.snapshot()
    last = latency.bucket_value(latency.BUCKETS - 1) / 1000.0  # about 10 min: beyond, the error is unbounded
    assert s.max_s == 1e6 and s.p99_s == pytest.approx(last) and s.p50_s is not None and s.p50_s <= 1e-3
    assert s.hist["offset"] == latency.ZERO_BUCKET  # 0 s and 1 ns: the zero/underflow bucket
    counts = s.hist["counts"]
    assert isinstance(counts, list) and counts[0] == 2 and counts[-1] == 1  # 1e6 s: the last bucket
    assert len(counts) == latency.BUCKETS
    single = LatencyHistogram()
    single.record(0.0123, True)
    assert single.snapshot().p50_s == pytest.approx(0.0123)  # clamped to the exact min/max


def test_histogram_records_on_the_contract_buckets() -> None:
    rng = random.Random(18)
    for _ in range(20_000):
        seconds = math.exp(rng.uniform(math.log(1e-7), math.log(1e3)))
        hist = LatencyHistogram()
        hist.record(seconds, True)
        snap = hist.snapshot()
        assert snap.hist == {"offset": latency.bucket_of(seconds * 1000.0), "counts": [1]}


def test_reset_on_send_loses_no_latency_recorded_concurrently() -> None:
    hist = LatencyHistogram()
    per_thread, threads = 20_000, 4
    sent: list[int] = []
    done = threading.Event()

    def recorder(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_thread):
            hist.record(rng.lognormvariate(-6, 1), True)

    def sender() -> None:
        while not done.is_set():
            snap = hist.snapshot(reset=True)
            sent.append(sum(snap.hist["counts"]))  # type: ignore[arg-type]
            assert snap.count == sum(snap.hist["counts"])  # type: ignore[arg-type]

    workers = [threading.Thread(target=recorder, args=(i,)) for i in range(threads)]
    drain = threading.Thread(target=sender)
    drain.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    drain.join()
    sent.append(sum(hist.snapshot(reset=True).hist["counts"]))  # type: ignore[arg-type]
    assert sum(sent) == per_thread * threads and len(sent) > 2


def test_backoff_full_jitter_grows_caps_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [backoff.next_delay() for _ in ceilings]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    many = [Backoff(1.0, 60.0, rng=random.Random(i)) for i in range(200)]
    for b in many:
        for _ in range(6):
            b.next_delay()
    spread = [b.next_delay() for b in many]  # the 7th attempt of 200 devices: spread over [0, 60]
    assert min(spread) < 10.0 and max(spread) > 50.0
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def _msg(seq: int, size: int = 100) -> bytes:
    return json.dumps({"seq": seq, "pad": "x" * size}).encode()


def test_spool_orders_persists_seq_and_removes_only_acked(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    seqs = [spool.append("events", _msg) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    rows = spool.peek(0, 10)
    assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert spool.remove([rows[0].id, rows[1].id]) == 2
    assert spool.stats()["queued"] == 3
    assert spool.next_counter("session") == 1
    spool.close()
    spool.close()  # twice is fine
    again = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    assert again.queued == 3 and again.seq == 5
    assert [json.loads(r.payload)["seq"] for r in again.peek(0, 10)] == [3, 4, 5]
    assert again.append("telemetry", _msg) == 6
    assert again.next_counter("session") == 2
    again.close()


def test_spool_size_limit_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=1000, max_age_s=3600)
    for _ in range(20):
        spool.append("telemetry", lambda seq: _msg(seq, 180))  # ~200 bytes each
    size = len(_msg(1, 180))
    keep = 1000 // size
    stats = spool.stats()
    assert stats["queued"] == keep and stats["dropped"] == 20 - keep and stats["bytes"] <= 1000
    assert [json.loads(r.payload)["seq"] for r in spool.peek(0, 100)] == list(range(21 - keep, 21))
    spool.close()
    assert Spool(tmp_path / "s.db", max_bytes=1000, max_age_s=3600).dropped == 20 - keep  # persisted


def test_spool_age_limit(tmp_path: Path) -> None:
    clock = [1000.0]
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=60, clock=lambda: clock[0])
    spool.append("events", _msg)
    spool.append("events", _msg)
    clock[0] += 30
    spool.append("events", _msg)
    clock[0] += 40  # the first two are now 70 s old
    spool.append("events", _msg)
    assert [json.loads(r.payload)["seq"] for r in spool.peek(0, 10)] == [3, 4]
    assert spool.stats()["dropped"] == 2


def test_spool_full_disk_is_a_counted_error_not_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=64 << 20, max_age_s=3600)
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    results = [spool.append("events", lambda seq: _msg(seq, 8000)) for _ in range(5)]
    assert None in results
    stored = [r for r in results if r is not None]
    assert spool.errors == results.count(None) and spool.queued == len(stored)
    assert spool.seq == len(stored)  # a message that was not stored does not use up a seq
    spool._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert spool.append("events", _msg) == len(stored) + 1


def test_spool_replaces_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    spool = Spool(path, max_bytes=1 << 20, max_age_s=60)
    assert spool.append("events", _msg) == 1
    assert len(list(tmp_path.glob("s.db.corrupt-*"))) == 1


def test_spool_epoch_is_kept_and_a_new_spool_starts_a_new_one(tmp_path: Path) -> None:
    """The epoch persists beside seq; a corrupt spool re-created or a new one (a re-imaged box) starts a new
    epoch (seq from 1 again); a spool from before epochs keeps counting in epoch 0."""
    path = tmp_path / "s.db"
    first = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    epoch = first.epoch
    assert 10**15 < epoch < 2**53  # creation ms x 1000 + 3 random digits
    first.append("events", _msg)
    first.close()
    again = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    assert (again.epoch, again.seq) == (epoch, 1)
    again.close()
    path.write_bytes(b"not sqlite any more" * 100)
    recreated = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    assert recreated.seq == 0 and recreated.epoch not in (0, epoch)
    assert recreated.append("events", _msg) == 1
    recreated.close()
    other = Spool(tmp_path / "other.db", max_bytes=1 << 20, max_age_s=3600)
    assert other.epoch not in (0, epoch)
    other.close()
    legacy = tmp_path / "legacy.db"
    old = Spool(legacy, max_bytes=1 << 20, max_age_s=3600)
    old.append("events", _msg)
    old._db.execute("DELETE FROM meta WHERE key = 'epoch'")  # as an agent from before epochs left it
    old.close()
    assert Spool(legacy, max_bytes=1 << 20, max_age_s=3600).epoch == 0


def test_temperature_reads_the_hottest_zone(tmp_path: Path) -> None:
    for name, value in (("thermal_zone0", "41500\n"), ("thermal_zone1", "57250\n"), ("thermal_zone2", "junk")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "temp").write_text(value)
    assert read_temperature_c(tmp_path) == 57.25
    assert read_temperature_c(tmp_path / "none") is None


def test_system_figures_match_what_linux_says(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path)
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # busy for a moment, so the CPU figure has something to show
        pass
    figures = sampler.sample()
    assert 0.0 < figures["cpu_pct"] <= 100.0
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    assert abs(figures["rss_mb"] - int(status["VmRSS"].split()[0]) / 1024) < 5.0
    assert 0.0 < figures["mem_mb"] < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert abs(figures["disk_free_mb"] - shutil.disk_usage(tmp_path).free / 2**20) < 64.0


def test_system_figures_from_a_proc_tree_and_without_one(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 100 0 100 700 100 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal:        8000000 kB\nMemFree: 1 kB\nMemAvailable:    6976000 kB\n")
    (proc / "self" / "statm").write_text(f"9999 {25 * 2**20 // os.sysconf('SC_PAGE_SIZE')} 10 1 0 100 0\n")
    sampler = SystemSampler(tmp_path, proc=proc)
    (proc / "stat").write_text("cpu  250 0 150 800 100 0 0 0 0 0\n")  # 200 busy of 300 jiffies since
    figures = sampler.sample()
    assert figures["cpu_pct"] == 66.7 and figures["mem_mb"] == 1000.0 and figures["rss_mb"] == 25.0
    # no tick since the previous sample (a fast emit): the figure is the since-boot share, 400 busy of 1300
    assert sampler.sample()["cpu_pct"] == 30.8
    gone = SystemSampler(tmp_path / "nowhere", proc=tmp_path / "noproc").sample()
    assert not {"cpu_pct", "mem_mb", "rss_mb"} & gone.keys() and gone["disk_free_mb"] is None


def test_dispatcher_acks_and_errors() -> None:
    emitted: list[tuple[str, dict[str, Any]]] = []
    disp = CommandDispatcher(lambda type, **f: emitted.append((type, f)))
    disp.register("ping", lambda c: {"pong": c.args["n"]})
    def boom(command: Command) -> dict[str, Any]:
        raise ZeroDivisionError("division by zero")

    disp.register("boom", boom)
    disp.dispatch(Command(id="a", type="ping", args={"n": 3}))
    disp.dispatch(Command(id="b", type="nope"))
    disp.dispatch(Command(id="c", type="boom"))
    disp.submit_raw(b'{"type": "ping"}')
    disp.submit_raw(b"not json")
    assert emitted[0] == ("command.ack", {"id": "a", "command": "ping", "result": {"pong": 3}})
    assert emitted[1][0] == "command.error" and emitted[1][1]["id"] == "b"
    assert "unknown command type 'nope'" in emitted[1][1]["reason"]
    assert emitted[2] == ("command.error", {"id": "c", "command": "boom",
                                            "reason": "ZeroDivisionError: division by zero"})
    assert emitted[3][0] == "command.error" and emitted[3][1]["command"] == "ping"
    assert emitted[3][1]["reason"].startswith("invalid command")
    assert emitted[4][0] == "command.error" and emitted[4][1]["id"] is None
    assert (disp.handled, disp.failed) == (1, 4)

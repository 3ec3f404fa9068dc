"""Telemetry against a real Mosquitto on a free port: birth, telemetry, events, commands, outages."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent import latency
from edgefleet.agent.telemetry import Telemetry
from edgefleet.agent.wire import Command, ModelMeta
from tests.support.broker import Mosquitto
from tests.support.net import free_port, wait_until
from tests.telemetry.support import ROOT, Collector, agent_config, events_of

HW = {"machine": "x86_64", "cpus": 2}
OUTAGE_S = float(os.environ.get("EDGEFLEET_TEST_OUTAGE_S", "5"))


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[Collector]:
    c = Collector(mosquitto.port, [f"{ROOT}/+/#"])
    yield c
    c.close()


def _agent(state: Path, port: int, **sections: Any) -> Telemetry:
    return Telemetry(agent_config(state, port, **sections), hw=HW, agent_version="1.2.3")


def test_birth_is_retained_and_session_grows_across_restarts(tmp_path: Path, mosquitto: Mosquitto,
                                                             collector: Collector) -> None:
    tel = _agent(tmp_path / "state", mosquitto.port)
    tel.set_model(ModelMeta(name="det", version=3, sha256="ab" * 32), "onnxruntime", "CPUExecutionProvider")
    tel.start()
    wait_until(lambda: tel.connected)
    birth = collector.wait_for("status")[-1]
    assert birth["online"] is True and birth["session"] == 1 and birth["agent_version"] == "1.2.3"
    assert birth["model"] == {"name": "det", "version": 3, "sha256": "ab" * 32}
    assert (birth["runtime"], birth["delegate"], birth["hw"]) == ("onnxruntime", "CPUExecutionProvider", HW)
    tel.set_model(ModelMeta(name="det", version=4), "litert", "xnnpack")  # re-published at once
    second = collector.wait_for("status", lambda d: len(d) >= 2)[-1]
    assert (second["model"]["version"], second["runtime"], second["session"]) == (4, "litert", 1)
    late = Collector(mosquitto.port, [f"{ROOT}/cam-01/status"], client_id="late")  # retained
    try:
        retained = late.wait_for("status")
        assert retained[-1]["model"]["version"] == 4 and late.messages[-1][2] is True
    finally:
        late.close()
    tel.stop()
    tel.stop()  # twice is fine
    offline = collector.wait_for("status", lambda d: d[-1]["online"] is False)[-1]
    assert birth["epoch"] > 0
    assert offline == {"online": False, "session": 1, "epoch": birth["epoch"]}  # a clean stop says so itself
    again = _agent(tmp_path / "state", mosquitto.port)
    again.start()
    try:
        reborn = collector.wait_for("status", lambda d: d[-1]["online"])[-1]
        assert (reborn["session"], reborn["epoch"]) == (2, birth["epoch"])  # the same spool: the same epoch
    finally:
        again.stop()


def test_telemetry_fields_and_percentiles(tmp_path: Path, mosquitto: Mosquitto, collector: Collector) -> None:
    tel = _agent(tmp_path, mosquitto.port)
    tel.set_model(ModelMeta(name="cls", version=7), "onnxruntime", "CPUExecutionProvider")
    tel.add_provider("drift", lambda: {"psi": 0.12})
    def broken() -> dict[str, Any]:
        raise ZeroDivisionError("integer division or modulo by zero")

    tel.add_provider("broken", broken)
    tel.start()
    wait_until(lambda: tel.connected)
    for ms in range(1, 101):  # 1..100 ms
        tel.record_inference(ms / 1000.0, True)
    for _ in range(4):
        tel.record_inference(0.5, False)
    tel.record_dropped(3)
    seq = tel.emit_telemetry()
    doc = collector.wait_for("telemetry")[-1]
    tel.stop()
    assert doc["seq"] == seq == 1
    inf = doc["inference"]
    assert (inf["count"], inf["errors"], inf["dropped_frames"]) == (104, 4, 3)
    lat = inf["latency_ms"]
    for got, exact in ((lat["p50"], 50), (lat["p95"], 95), (lat["p99"], 99)):  # within the buckets' 2 %
        assert abs(got - exact) <= 0.02 * exact + 1e-3
    assert lat["max"] == 100.0
    hist = inf["latency_hist"]  # the timed inferences (errors are counted, not timed), on the contract's buckets
    assert sum(hist["counts"]) == 100 and hist["counts"][0] and hist["counts"][-1]
    assert hist["offset"] == latency.bucket_of(1.0) and hist["offset"] + len(hist["counts"]) - 1 == \
        latency.bucket_of(100.0)
    assert inf["fps"] > 0
    assert (doc["model"]["name"], doc["model"]["version"], doc["runtime"]) == ("cls", 7, "onnxruntime")
    system = doc["system"]
    assert set(system) == {"cpu_pct", "mem_mb", "rss_mb", "temp_c", "disk_free_mb", "uptime_s"}
    assert system["rss_mb"] > 10 and system["mem_mb"] > 0 and system["disk_free_mb"] > 0
    assert 0 <= system["cpu_pct"] <= 100 and system["uptime_s"] >= 0
    assert doc["spool"]["dropped"] == 0 and doc["spool"]["errors"] == 0
    assert doc["drift"] == {"psi": 0.12}
    assert doc["broken"] == {"error": "ZeroDivisionError: integer division or modulo by zero"}


def test_commands_interval_results_unknown_and_failing(tmp_path: Path, mosquitto: Mosquitto,
                                                       collector: Collector) -> None:
    tel = _agent(tmp_path, mosquitto.port)
    calls: list[Command] = []
    tel.on_command("check_update", lambda c: calls.append(c) or {"checked": True})  # type: ignore[func-returns-value]
    tel.on_command("explode", lambda c: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    tel.start()
    wait_until(lambda: tel.connected)
    wait_until(lambda: tel.stats["births"] >= 1)
    cmd = f"{ROOT}/cam-01/commands"
    collector.send(cmd, {"id": "c1", "type": "set_telemetry_interval", "args": {"interval_s": 0.3}})
    ack = collector.wait_for("events", lambda d: events_of(d, "command.ack"))[0]
    assert ack["id"] == "c1" and ack["result"] == {"interval_s": 0.3} and tel.interval_s == 0.3
    times = [doc["ts"] for doc in collector.wait_for("telemetry", lambda d: len(d) >= 4, timeout=5)[:4]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.2 < g < 0.6 for g in gaps), gaps
    collector.send(cmd, {"id": "c2", "type": "reboot_now"})
    collector.send(cmd, {"id": "c3", "type": "set_telemetry_interval", "args": {"interval_s": -1}})
    collector.send(cmd, {"id": "c4", "type": "explode"})
    collector.send(cmd, {"id": "c5", "type": "check_update"})
    collector.send(cmd, {"id": "c6", "type": "set_results", "args": {"enabled": True}})
    errors = {e["id"]: e for e in collector.wait_for("events", lambda d: len(events_of(d, "command.error")) >= 3)
              if e["type"] == "command.error"}
    assert "unknown command type 'reboot_now'" in errors["c2"]["reason"]
    assert "interval_s must be a number" in errors["c3"]["reason"] and tel.interval_s == 0.3
    assert errors["c4"]["reason"] == "RuntimeError: disk on fire" and errors["c4"]["command"] == "explode"
    acks = {e["id"]: e for e in collector.wait_for("events", lambda d: len(events_of(d, "command.ack")) >= 3)
            if e["type"] == "command.ack"}
    assert acks["c5"]["result"] == {"checked": True} and calls[0].id == "c5"
    assert acks["c6"]["result"] == {"enabled": True}
    for i in range(10):  # max_per_s 2 (burst 2): the rest of a burst is dropped, counted
        tel.publish_result({"frame": i, "label": "cat"})
    results = collector.wait_for("results", lambda d: len(d) >= 2)
    assert [r["frame"] for r in results] == [0, 1] and tel.stats["results_dropped"] == 8
    seqs = [d["seq"] for t, d, _ in collector.messages if t.endswith(("/events", "/telemetry"))]
    assert seqs == list(range(1, len(seqs) + 1))  # one counter over telemetry and events
    tel.stop()


def test_broker_outage_mid_stream_no_seq_gap_in_order(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.workdir.mkdir()
    broker.start()
    sub = Collector(broker.port, [f"{ROOT}/cam-01/telemetry", f"{ROOT}/cam-01/events"], client_id="ops",
                    persistent=True)
    tel = _agent(tmp_path / "state", broker.port, telemetry={"interval_s": 0.1})
    try:
        tel.start()
        wait_until(lambda: len(sub.on("telemetry")) >= 5)
        broker.stop()
        wait_until(lambda: not tel.connected)
        for i in range(20):
            tel.event("runtime.fallback", n=i)
        time.sleep(OUTAGE_S)
        queued = tel.stats["queued"]
        assert queued >= 20 + int(OUTAGE_S / 0.1) // 2
        broker.start()
        wait_until(lambda: tel.connected, timeout=10)
        last = tel.stats["seq"]
        wait_until(lambda: max((d["seq"] for _, d, _ in sub.messages), default=0) >= last, timeout=15)
    finally:
        tel.stop()
        sub.close()
        broker.stop()
    seqs = [d["seq"] for _, d, _ in sub.messages]
    first_seen: list[int] = []
    for s in seqs:  # at-least-once: a message in flight at the cut may come twice; order must hold
        if s not in first_seen:
            first_seen.append(s)
    assert first_seen == list(range(1, max(seqs) + 1))
    assert [d["n"] for _, d, _ in sub.messages if d.get("type") == "runtime.fallback"][:20] == list(range(20))


def test_agent_restart_delivers_what_the_spool_kept(tmp_path: Path, mosquitto: Mosquitto,
                                                    collector: Collector) -> None:
    dead_port = free_port()  # nothing listens: every message stays in the spool
    first = _agent(tmp_path, dead_port)
    first.start()
    for i in range(50):
        first.event("update.downloading", progress=i)
    first.emit_telemetry()
    assert first.stats["queued"] == 51 and not first.connected
    first.stop(timeout=1.0)
    second = _agent(tmp_path, mosquitto.port)
    assert second.stats["queued"] == 51 and second.stats["seq"] == 51
    second.start()
    try:
        events = collector.wait_for("events", lambda d: len(d) >= 50)
        assert [e["progress"] for e in events] == list(range(50))
        assert [e["seq"] for e in events] == list(range(1, 51))
        assert collector.wait_for("telemetry")[0]["seq"] == 51
        wait_until(lambda: second.stats["queued"] == 0)
        second.event("update.verified")
        assert collector.wait_for("events", lambda d: len(d) >= 51)[-1]["seq"] == 52
    finally:
        second.stop()


def test_spool_limit_drops_are_reported(tmp_path: Path, mosquitto: Mosquitto, collector: Collector) -> None:
    offline = _agent(tmp_path, free_port(), telemetry={"spool_max_mb": 0.01})  # ~10 kB
    for i in range(200):
        offline.event("runtime.fallback", pad="x" * 100, n=i)
    kept = offline.stats["queued"]
    assert offline.stats["dropped"] == 200 - kept and 40 < kept < 100
    offline.stop()
    tel = _agent(tmp_path, mosquitto.port, telemetry={"spool_max_mb": 0.01})
    tel.start()
    try:
        events = collector.wait_for("events", lambda d: len(d) >= kept)
        assert [e["n"] for e in events] == list(range(200 - kept, 200))  # the newest survive, in order
        wait_until(lambda: tel.stats["queued"] == 0)
        tel.emit_telemetry()
        doc = collector.wait_for("telemetry")[-1]
        assert doc["spool"]["dropped"] == 200 - kept and doc["seq"] == 201
    finally:
        tel.stop()


def test_forced_mqtt_311(tmp_path: Path, mosquitto: Mosquitto, collector: Collector) -> None:
    tel = _agent(tmp_path, mosquitto.port, mqtt={"protocol": "3.1.1"})
    tel.start()
    try:
        wait_until(lambda: tel.connected)
        assert tel.stats["protocol"] == "3.1.1"
        tel.event("runtime.fallback", reason="test")
        assert collector.wait_for("events")[0]["reason"] == "test"
    finally:
        tel.stop()


def test_latency_histograms_add_up_to_the_inferences_over_a_real_run(tmp_path: Path, mosquitto: Mosquitto,
                                                                     collector: Collector) -> None:
    """An inference thread records while the worker emits every 0.2 s (reset on send): every message's
    histogram holds exactly its timed inferences, and over the run they add up to all of them, none twice."""
    tel = _agent(tmp_path, mosquitto.port, telemetry={"interval_s": 0.2})
    tel.set_model(ModelMeta(name="cls", version=7), "onnxruntime", "CPUExecutionProvider")
    tel.start()
    wait_until(lambda: tel.connected)
    recorded, failed = 0, 0
    rng = random.Random(18)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for _ in range(200):
            ok = rng.random() > 0.01
            tel.record_inference(rng.lognormvariate(-6.0, 0.5), ok)
            recorded += ok
            failed += not ok
        time.sleep(0.005)
    last = tel.emit_telemetry()
    # the worker may emit more after it (empty ones): wait for this one; the spool sends in seq order
    docs = collector.wait_for("telemetry", lambda d: any(doc["seq"] == last for doc in d), timeout=20)
    tel.stop()
    assert len(docs) >= 4  # several intervals, each reset on send
    for doc in docs:
        inference = doc["inference"]
        hist = inference.get("latency_hist", {"offset": 0, "counts": []})
        assert sum(hist["counts"]) == inference["count"] - inference["errors"]
        assert hist["offset"] >= 0 and hist["offset"] + len(hist["counts"]) <= latency.BUCKETS
    assert sum(sum(d["inference"]["latency_hist"]["counts"]) for d in docs) == recorded
    assert sum(d["inference"]["count"] for d in docs) == recorded + failed

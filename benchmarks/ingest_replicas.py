"""Telemetry ingestion into PostgreSQL end to end with 1 and with 2 server replicas, measured in the same run.

publishers -> Mosquitto (persistent shared-subscription sessions, as benchmarks/fleet_sim.py starts it) ->
``$share/edgefleet/...`` -> each replica's writer (validation, telemetry + latency_hist rows, per-minute sums,
device rows; acknowledged after commit) -> PostgreSQL.

    .venv/bin/python benchmarks/ingest_replicas.py [--messages 40000] [--rounds 2] [--publishers 2]
                                                   [--devices 1000] [--no-latency-hist] [--json]

- Rounds alternate 1 and 2 replicas (the second replica stopped cleanly, so its share goes to the one left, or
  started again); msg/s = rows stored / (first publish to the last row committed), each round its own epoch.
- The ceiling, in the same run: the same messages on a topic no replica reads, to bare paho subscribers that
  store nothing (one, and two in a shared group, each in its own process).
- CPU: seconds each process used per 1,000 messages (replicas, the PostgreSQL backends serving them, the
  broker, the publishers), and how busy the machine was: where the cores went.
- Messages carry ``inference.latency_hist`` (what agents send since issue 18; ``--no-latency-hist``: without).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BARE_ROOT = "bench/v1/devices"  # the ceiling's topic: no replica subscribes to it


def bodies(devices: int, messages: int, epoch: int, with_hist: bool) -> list[tuple[str, bytes]]:
    """(device id, payload) of ``messages`` telemetry messages round-robin over ``devices``."""
    from edgefleet.agent import latency

    rng = random.Random(epoch)
    hists = []
    for d in range(min(devices, 200)):
        counts: dict[int, int] = {}
        for _ in range(100):
            k = latency.bucket_of(rng.lognormvariate(math.log(2.0 + d % 7), 0.35))
            counts[k] = counts.get(k, 0) + 1
        hists.append(latency.encode(counts))
    out = []
    now = time.time()
    for i in range(messages):
        d = i % devices
        inference: dict[str, Any] = {"count": 100, "errors": 0, "latency_ms": {"p50": 2.0, "p95": 3.0}, "fps": 10.0}
        if with_hist:
            inference["latency_hist"] = hists[d % len(hists)]
        body = {"seq": i // devices + 1, "epoch": epoch, "ts": now, "model": {"name": "m", "version": 1},
                "runtime": "onnxruntime", "inference": inference, "system": {"cpu_pct": 20.0, "rss_mb": 80.0}}
        out.append((f"flood-{d:05d}", json.dumps(body, separators=(",", ":")).encode()))
    return out


def publish(port: int, root: str, messages: list[tuple[str, bytes]], name: str, go: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    go.wait(60)
    last = None
    for device_id, body in messages:
        last = client.publish(f"{root}/{device_id}/telemetry", body, qos=1)
    if last is not None:
        last.wait_for_publish(300)
    client.loop_stop()
    client.disconnect()


def bare_subscriber(port: int, name: str, shared: bool, ready: Any, out: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[float] = [0, 0.0]

    def on_message(*_args: object) -> None:
        got[0] += 1
        got[1] = time.time()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(("$share/bench/" if shared else "") + f"{BARE_ROOT}/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(0.5)
    ready.set()
    idle_since = time.monotonic()
    seen = 0.0
    while time.monotonic() - idle_since < 3.0:  # stop 3 s after the last message
        time.sleep(0.1)
        if got[0] != seen:
            seen, idle_since = got[0], time.monotonic()
    client.loop_stop()
    client.disconnect()
    out.put((got[0], got[1], time.process_time()))


def _flood(port: int, root: str, messages: list[tuple[str, bytes]], publishers: int) -> tuple[list[Any], Any, float]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=publish, args=(port, root, messages[i::publishers], f"pub-{root[:5]}-{i}", go))
             for i in range(publishers)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # connected, and the payloads handed over
    started = time.time()
    go.set()
    return procs, go, started


def ceiling(port: int, messages: list[tuple[str, bytes]], publishers: int, subscribers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    readies = [ctx.Event() for _ in range(subscribers)]
    subs = [ctx.Process(target=bare_subscriber, args=(port, f"bare-{subscribers}-{i}", subscribers > 1, readies[i],
                                                      out)) for i in range(subscribers)]
    for sub in subs:
        sub.start()
    for ready in readies:
        ready.wait(30)
    procs, _go, started = _flood(port, BARE_ROOT, messages, publishers)
    results = [out.get(timeout=600) for _ in subs]
    for proc in [*procs, *subs]:
        proc.join(30)
    got, last = int(sum(r[0] for r in results)), max(r[1] for r in results)
    return {"subscribers": subscribers, "received": got, "msgs_per_s": round(got / max(1e-6, last - started), 1),
            "cpu_s_per_1000_msgs": round(sum(r[2] for r in results) / max(1, got) * 1000, 3)}


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _pg_backends(conn: Any, replica_pids: list[int]) -> list[int]:
    """The PostgreSQL backends serving these replica processes (matched by their client ports)."""
    ports = set()
    for pid in replica_pids:
        try:
            ports |= {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr and
                      c.raddr.port == 5432}
        except psutil.Error:
            continue
    rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL").fetchall()
    return [int(pid) for pid, port in rows if port in ports]


def py_spy(pids: list[int], seconds: float, out_dir: Path, tag: str) -> list[Any]:
    """``py-spy record --gil`` of each process for ``seconds``: collapsed stacks of whichever thread holds the
    GIL, i.e. where the Python CPU goes (on a loaded box long C calls are over-weighted: a thread descheduled
    while it holds the GIL is still sampled)."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-d", str(max(1, int(seconds))), "-r", "200", "--gil", "--nonblocking", "-f", "raw"]
    return [subprocess.Popen([exe, "record", "-p", str(pid), *flags, "-o", str(out_dir / f"{tag}-{i}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, pid in enumerate(pids)]


def ingest_round(stack: Any, replicas: int, messages: list[tuple[str, bytes]], epoch: int,
                 publishers: int, spy: Path | None = None) -> dict[str, Any]:
    import psycopg

    from benchmarks._fleet.scaleout import psycopg_url

    cluster = stack.cluster
    replica_pids = [cluster.replicas[i].proc.pid for i in range(replicas)]
    with psycopg.connect(psycopg_url(stack.db_url), autocommit=True) as conn:
        machine = psutil.cpu_times()
        before = {"replicas": _cpu(replica_pids), "broker": _cpu([stack.pids["broker"]])}
        backends = {pid: _cpu([pid]) for pid in _pg_backends(conn, replica_pids)}  # the pool's, kept open
        procs, _go, started = _flood(stack.mqtt_port, "edgefleet/v1/devices", messages, publishers)
        spies = py_spy(replica_pids, 8.0, spy, f"replicas{replicas}-epoch{epoch}") if spy else []
        pub_pids = [p.pid for p in procs if p.pid is not None]
        publisher_cpu = 0.0
        while any(p.is_alive() for p in procs):
            publisher_cpu = max(publisher_cpu, _cpu(pub_pids))
            for pid in _pg_backends(conn, replica_pids):
                backends.setdefault(pid, 0.0)  # opened during the round: all its CPU counts
            time.sleep(0.5)
        stored, finished = 0, time.time()
        while time.time() - started < 600:
            stored = int(conn.execute("SELECT count(*) FROM telemetry WHERE epoch = %s",
                                      (epoch,)).fetchone()[0])  # type: ignore[index]
            finished = time.time()
            if stored >= len(messages):
                break
            time.sleep(0.1)
        for proc in procs:
            proc.join(30)
        for spy_proc in spies:
            spy_proc.wait(60)
        after = {"replicas": _cpu(replica_pids), "broker": _cpu([stack.pids["broker"]]),
                 "postgres": sum(_cpu([pid]) - base for pid, base in backends.items())}
        before["postgres"] = 0.0
        now = psutil.cpu_times()
    elapsed = finished - started
    busy = sum(getattr(now, f) - getattr(machine, f) for f in ("user", "system", "nice", "irq", "softirq", "steal"))
    idle = (now.idle - machine.idle) + (now.iowait - machine.iowait)
    per_k = {name: round((after[name] - before[name]) / len(messages) * 1000, 3) for name in after}
    per_k["publishers"] = round(publisher_cpu / len(messages) * 1000, 3)
    return {"replicas": replicas, "messages": len(messages), "stored": stored, "seconds": round(elapsed, 2),
            "msgs_per_s": round(stored / elapsed, 1), "cpu_s_per_1000_msgs": per_k,
            "machine_busy_pct": round(busy / max(1e-6, busy + idle) * 100, 1)}


def enroll(db_url: str, devices: int) -> None:
    from edgefleet.server.crud import devices as device_crud
    from edgefleet.server.db import Database

    db = Database(db_url)
    with db.session() as session:
        for d in range(devices):
            device_crud.enroll_device(session, device_id=f"flood-{d:05d}", device_class=f"class-{d % 3}", tags=[],
                                      hw={})
    db.dispose()


def use_replicas(cluster: Any, replicas: int) -> None:
    """Replicas 0..replicas-1 running, the others stopped cleanly (their share handed over)."""
    for index in range(len(cluster.replicas)):
        running = cluster.replicas[index].proc.poll() is None
        if index >= replicas and running:
            cluster.replicas[index].stop()
        elif index < replicas and not running:
            cluster.restart(index, timeout=90)
    time.sleep(3.0)  # subscribed, and the broker's shared group has every replica left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of 1 and 2 replicas")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--devices", type=int, default=1000, help="enrolled devices the messages come from")
    parser.add_argument("--no-latency-hist", action="store_true", help="messages without inference.latency_hist")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record each replica with py-spy for 8 s of every round (collapsed stacks in DIR)")
    args = parser.parse_args(argv)

    from benchmarks._fleet.scaleout import start_scaled

    def log(text: str) -> None:
        print(f"[ingest_replicas] {text}", file=sys.stderr, flush=True)

    with_hist = not args.no_latency_hist
    log("starting Mosquitto, PostgreSQL (a fresh schema), 2 replicas and HAProxy")
    stack = start_scaled(replicas=2, database="postgresql", storage="local", log_level="WARNING",
                         rollout_tick_s=1.0)
    report: dict[str, Any] = {"messages": args.messages, "devices": args.devices, "publishers": args.publishers,
                              "latency_hist": with_hist, "cores": psutil.cpu_count(), "load_before":
                              [round(x, 2) for x in psutil.getloadavg()], "rounds": []}
    try:
        enroll(str(stack.db_url), args.devices)
        use_replicas(stack.cluster, 0)
        sample = bodies(args.devices, args.messages, 0, with_hist)
        log("ceiling: bare subscribers")
        report["ceiling"] = [ceiling(stack.mqtt_port, sample, args.publishers, n) for n in (1, 2)]
        epoch = 0
        for round_no in range(args.rounds):
            for replicas in ((1, 2) if round_no % 2 == 0 else (2, 1)):
                epoch += 1
                use_replicas(stack.cluster, replicas)
                result = ingest_round(stack, replicas, bodies(args.devices, args.messages, epoch, with_hist), epoch,
                                      args.publishers, args.py_spy)
                log(f"{replicas} replica(s): {result['msgs_per_s']:,.0f} msg/s ({result['stored']} stored), "
                    f"machine {result['machine_busy_pct']}% busy")
                report["rounds"].append(result)
    finally:
        stack.stop()
    rates = {n: statistics.median(r["msgs_per_s"] for r in report["rounds"] if r["replicas"] == n) for n in (1, 2)}
    report.update(msgs_per_s_1_replica=rates[1], msgs_per_s_2_replicas=rates[2],
                  ratio_2_to_1=round(rates[2] / rates[1], 3), load_after=[round(x, 2) for x in psutil.getloadavg()])
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.messages} messages from {args.devices} devices, {args.publishers} publishers, "
          f"{'with' if with_hist else 'without'} latency_hist; {psutil.cpu_count()} cores, load "
          f"{report['load_before']} -> {report['load_after']}")
    for c in report["ceiling"]:
        print(f"ceiling: {c['subscribers']} bare subscriber(s): {c['msgs_per_s']:,.0f} msg/s, CPU s per 1,000 msgs "
              f"{c['cpu_s_per_1000_msgs']}")
    for r in report["rounds"]:
        print(f"{r['replicas']} replica(s): {r['msgs_per_s']:,.0f} msg/s, CPU s per 1,000 msgs "
              f"{r['cpu_s_per_1000_msgs']}, machine {r['machine_busy_pct']}% busy")
    print(f"median: 1 replica {rates[1]:,.0f} msg/s, 2 replicas {rates[2]:,.0f} msg/s, ratio "
          f"{report['ratio_2_to_1']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

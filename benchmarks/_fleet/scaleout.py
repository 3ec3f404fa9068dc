"""The scale-out stack and its proof: replicas behind HAProxy on PostgreSQL, S3 (SeaweedFS) and a Mosquitto
configured for persistent shared-subscription sessions; a replica SIGKILLed mid-rollout and restarted;
what was lost; and the capacity figures with 1 and with 2 replicas.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

# the broker keeps every message for an offline persistent session (a replica being restarted); its default
# of 1,000 queued messages per client drops the rest (benchmarks/shared_subscription.py measures it)
MOSQUITTO_CONF = "max_queued_messages 0\nmax_inflight_messages 0\n"


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def start_scaled(*, replicas: int, database: str, storage: str, log_level: str, rollout_tick_s: float,
                 lease_ttl_s: float = 5.0) -> Any:
    """Mosquitto, PostgreSQL (a fresh schema) or SQLite, S3 or a local directory, ``replicas`` servers and
    HAProxy, all on loopback; a ``Stack`` whose ``server_url`` is HAProxy's."""
    from benchmarks._fleet.stack import Stack
    from tests.support.broker import Mosquitto
    from tests.support.cluster import start_cluster
    from tests.support.databases import database_url
    from tests.support.s3 import SeaweedS3

    if database == "sqlite" and replicas > 1:
        raise ValueError("--replicas above 1 needs --database postgresql (SQLite is one process by design)")
    tmp = tempfile.TemporaryDirectory(prefix="fleet-sim-")
    root = Path(tmp.name)
    resources = ExitStack()
    try:
        (root / "broker").mkdir()
        broker = Mosquitto(root / "broker", extra_conf=MOSQUITTO_CONF).start()
        resources.callback(broker.stop)
        url = resources.enter_context(database_url(database, root))
        section: dict[str, Any] | None = None
        env: dict[str, str] = {}
        pids: dict[str, int] = {"broker": broker.proc.pid if broker.proc else 0}
        if storage == "s3":
            s3 = SeaweedS3(root).start()
            resources.callback(s3.stop)
            section, env = s3.storage_section(root / "s3-scratch"), s3.env()
            pids["s3"] = s3.proc.pid if s3.proc else 0
        cluster = start_cluster(root, replicas, database_url=url, mqtt_port=broker.port, storage=section, env=env,
                                overrides={"log_level": log_level, "rollout_tick_s": rollout_tick_s,
                                           "lease_ttl_s": lease_ttl_s}, check_ms=1000)
        resources.callback(cluster.stop)
        for index, replica in enumerate(cluster.replicas):
            pids[f"server{index}"] = replica.proc.pid
        if cluster.proxy is not None and cluster.proxy.proc is not None:
            pids["haproxy"] = cluster.proxy.proc.pid
    except BaseException:
        resources.close()
        tmp.cleanup()
        raise
    return Stack(server_url=cluster.url, admin_token=cluster.admin_token, enrollment_token=cluster.enrollment_token,
                 public_key_pem=cluster.public_key_path.read_bytes(), mqtt_host="127.0.0.1", mqtt_port=broker.port,
                 mqtt_v5=True, broker_kind="mosquitto", db_path=None, db_url=url, cluster=cluster, pids=pids,
                 _stops=[resources.close], _tmp=tmp)


class ReplicaKiller:
    """SIGKILLs the replica that leads the rollout loop ``at_s`` after ``arm()``, restarts it ``down_s`` later
    (in a thread: the caller keeps draining the fleet's progress)."""

    def __init__(self, cluster: Any, at_s: float, down_s: float) -> None:
        self.cluster, self.at_s, self.down_s = cluster, at_s, down_s
        self.armed_at: float | None = None
        self.doc: dict[str, Any] = {"at_s": at_s, "down_s": down_s}
        self.thread: threading.Thread | None = None

    def arm(self) -> None:
        self.armed_at = time.monotonic()

    def poll(self) -> None:
        if self.armed_at is None or self.thread is not None or time.monotonic() - self.armed_at < self.at_s:
            return
        self.thread = threading.Thread(target=self._kill_and_restart, daemon=True)
        self.thread.start()

    def _leader(self) -> int:
        for index, replica in enumerate(self.cluster.replicas):
            try:
                if "rollouts" in requests.get(replica.url + "/readyz", timeout=2).json().get("leads", []):
                    return index
            except (requests.RequestException, ValueError):
                continue
        return 0

    def _kill_and_restart(self) -> None:
        assert self.armed_at is not None
        index = self._leader()
        self.doc.update(replica=f"replica-{index}", was_leader=index == self._leader())
        self.cluster.kill(index)
        killed = time.monotonic()
        self.doc["killed_s"] = round(killed - self.armed_at, 2)
        watcher = threading.Thread(target=self._watch_takeover, args=(index, killed), daemon=True)
        watcher.start()
        time.sleep(self.down_s)
        try:
            self.cluster.restart(index, timeout=90)
            self.doc["restarted_s"] = round(time.monotonic() - self.armed_at, 2)
        except Exception as exc:  # reported, and the run goes on with the others
            self.doc["restart_failed"] = str(exc)[:300]
        watcher.join(60)

    def _watch_takeover(self, killed_index: int, killed: float, limit_s: float = 60.0) -> None:
        """How long until another replica leads the rollout loop."""
        others = [i for i in range(len(self.cluster.replicas)) if i != killed_index]
        while others and time.monotonic() - killed < limit_s:
            for other in others:
                try:
                    leads = requests.get(self.cluster.replicas[other].url + "/readyz", timeout=2).json()["leads"]
                except (requests.RequestException, ValueError, KeyError):
                    continue
                if "rollouts" in leads:
                    self.doc["leader_replaced_after_s"] = round(time.monotonic() - killed, 2)
                    self.doc["new_leader"] = f"replica-{other}"
                    return
            time.sleep(0.2)

    def join(self, timeout: float = 120.0) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.doc


def stored_seqs(db_url: str, table: str, prefix: str) -> dict[str, list[int]]:
    import psycopg

    with psycopg.connect(psycopg_url(db_url)) as conn:
        rows = conn.execute(f"SELECT device_id, seq FROM {table} WHERE device_id LIKE %s", (prefix + "%",)).fetchall()
    found: dict[str, list[int]] = {}
    for device_id, seq in rows:
        found.setdefault(device_id, []).append(int(seq))
    return found


def losses(db_url: str, prefix: str, finals: list[dict[str, Any]], rollout_devices: dict[str, str],
           settle_s: float = 60.0) -> dict[str, Any]:
    """Telemetry and events the broker acknowledged to a device but the database lacks (after waiting up to
    ``settle_s`` for a restarted replica to drain its session), rows stored twice, and update reports a
    device had answered 204 whose state the rollout does not show."""
    acked: dict[str, dict[str, set[int]]] = {"telemetry": {}, "events": {}}
    for final in finals:
        for kind, by_device in final["acked_seqs"].items():
            for device_id, seqs in by_device.items():
                acked[kind].setdefault(device_id, set()).update(seqs)
    expected = {kind: sum(len(s) for s in by_device.values()) for kind, by_device in acked.items()}
    doc: dict[str, Any] = {}
    deadline = time.monotonic() + settle_s
    while True:
        stored = {kind: stored_seqs(db_url, "telemetry" if kind == "telemetry" else "events", prefix)
                  for kind in acked}
        missing = {kind: sum(len(seqs - set(stored[kind].get(d, []))) for d, seqs in acked[kind].items())
                   for kind in acked}
        if not any(missing.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    doc["settled_after_s"] = round(settle_s - max(0.0, deadline - time.monotonic()), 1)
    for kind in acked:
        rows = sum(len(seqs) for seqs in stored[kind].values())
        distinct = sum(len(set(seqs)) for seqs in stored[kind].values())
        examples = sorted((d, seq) for d, seqs in acked[kind].items() for seq in seqs - set(stored[kind].get(d, [])))
        doc[kind] = {"acked_by_broker": expected[kind], "stored_rows": rows, "lost": missing[kind],
                     "duplicated": rows - distinct, "lost_examples": [f"{d}#{seq}" for d, seq in examples[:20]]}
    last = {d: s for final in finals for d, s in final["last_report"].items()}
    mismatched = sorted(d for d, state in last.items() if rollout_devices.get(d) != state)
    given_up = sum(int(f.get("reports_given_up", 0)) for f in finals)
    doc["reports"] = {"acked": sum(int(f.get("reports_acked", 0)) for f in finals), "given_up": given_up,
                      "last_acked_not_on_server": len(mismatched), "examples": mismatched[:5]}
    doc["reports_lost"] = len(mismatched) + given_up
    doc["telemetry_lost"] = doc["telemetry"]["lost"]
    doc["telemetry_duplicated"] = doc["telemetry"]["duplicated"]
    doc["events_lost"] = doc["events"]["lost"]
    return doc


# --- capacity with 1 and with N replicas ----------------------------------------------------------------


FLOOD_DEVICES = 200


def _flood(port: int, messages: int, device_ids: list[str], epoch: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{epoch}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    last = None
    for i in range(messages):
        body = {"seq": i // len(device_ids) + 1, "epoch": epoch, "ts": time.time(),
                "model": {"name": "m", "version": 1}, "runtime": "onnxruntime",
                "system": {"cpu_pct": 20.0, "rss_mb": 80.0},
                "inference": {"count": 100, "errors": 0, "latency_ms": {"p50": 2.0, "p95": 3.0}, "fps": 10.0}}
        last = client.publish(f"edgefleet/v1/devices/{device_ids[i % len(device_ids)]}/telemetry", json.dumps(body),
                              qos=1)
    if last is not None:
        last.wait_for_publish(300)
    client.loop_stop()
    client.disconnect()


def ingest_rate(stack: Any, messages: int, device_ids: list[str], epoch: int,
                timeout: float = 300.0) -> dict[str, Any]:
    """Telemetry messages per second into the database, from the first publish to the last row stored
    (the devices must be enrolled: the server stores no one else's telemetry; each round its own epoch)."""
    import psycopg

    publisher = mp.get_context("spawn").Process(target=_flood, args=(stack.mqtt_port, messages, device_ids, epoch))
    started = time.perf_counter()
    publisher.start()
    stored = 0
    with psycopg.connect(psycopg_url(stack.db_url), autocommit=True) as conn:
        while time.perf_counter() - started < timeout:
            stored = int(conn.execute("SELECT count(*) FROM telemetry WHERE device_id LIKE 'flood-%%' AND epoch = %s",
                                      (epoch,)).fetchone()[0])  # type: ignore[index]
            if stored >= messages:
                break
            time.sleep(0.1)
    elapsed = time.perf_counter() - started
    publisher.join(30)
    return {"messages": messages, "stored": stored, "seconds": round(elapsed, 2),
            "msgs_per_s": round(stored / elapsed, 1)}


async def _hammer(url: str, probes: list[tuple[str, str, str]], seconds: float, connections: int) -> dict[str, Any]:
    from benchmarks._fleet.http import HttpError, HttpPool
    from benchmarks._fleet.stats import percentile

    pool = HttpPool(url, size=connections)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def one(worker: int) -> None:
        index = worker
        while time.monotonic() < end:
            device_id, token, etag = probes[index % len(probes)]
            index += connections
            started = time.perf_counter()
            try:
                reply = await pool.request("GET", f"/v1/devices/{device_id}/manifest",
                                           {"Authorization": f"Bearer {token}", "If-None-Match": etag})
            except HttpError:
                statuses[0] = statuses.get(0, 0) + 1
                continue
            latencies.append((time.perf_counter() - started - reply.queued_s) * 1000)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(connections)))
    elapsed = time.monotonic() - began
    await pool.close()
    return {"requests": sum(statuses.values()), "per_s": round(sum(statuses.values()) / elapsed, 1),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def _hammer_process(url: str, probes: list[tuple[str, str, str]], seconds: float, connections: int,
                    out: Any) -> None:
    out.put(asyncio.run(_hammer(url, probes, seconds, connections)))


def checkin_rate(stack: Any, probes: list[tuple[str, str, str]], seconds: float, processes: int = 2,
                 connections: int = 16) -> dict[str, Any]:
    """Manifest check-ins per second through HAProxy (answered 304) from ``processes`` load generators."""
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=_hammer_process, args=(stack.server_url, probes[i::processes], seconds,
                                                        connections, out)) for i in range(processes)]
    for proc in procs:
        proc.start()
    parts = [out.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    by_status: dict[str, int] = {}
    for part in parts:
        for code, n in part["by_status"].items():
            by_status[code] = by_status.get(code, 0) + n
    return {"per_s": round(sum(p["per_s"] for p in parts), 1), "requests": sum(p["requests"] for p in parts),
            "by_status": by_status, "p99_ms": max((p["p99_ms"] or 0) for p in parts),
            "seconds": seconds, "generators": processes}


def enroll_probes(stack: Any, operator: Any, model: str, version: int, count: int, tag: str) -> list[tuple[str, str,
                                                                                                           str]]:
    """``count`` devices on a completed rollout of ``version``, each with the ETag of its manifest."""
    probes = []
    for index in range(count):
        device_id = f"{tag}-{index:04d}"
        reply = requests.post(stack.server_url + "/v1/enroll", timeout=30, json={
            "device_id": device_id, "enrollment_token": stack.enrollment_token, "tags": [tag], "hw": {}})
        reply.raise_for_status()
        probes.append((device_id, reply.json()["token"]))
    operator.create_rollout({"model": model, "version": version, "target": {"tags": [tag]}, "waves": [100],
                             "gates": {"soak_s": 0, "max_p95_regression": None}})
    with_etags = []
    for device_id, token in probes:
        reply = requests.get(f"{stack.server_url}/v1/devices/{device_id}/manifest",
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        reply.raise_for_status()
        with_etags.append((device_id, token, reply.headers["ETag"]))
    return with_etags


def capacity(stack: Any, operator: Any, *, model: str, version: int, messages: int, checkin_s: float,
             probes: int = 200) -> dict[str, Any]:
    """Ingestion msg/s and check-ins/s with one replica (the others stopped), then with all of them."""
    cluster = stack.cluster
    devices = enroll_probes(stack, operator, model, version, probes, "probe")
    flooders = [f"flood-{i:03d}" for i in range(FLOOD_DEVICES)]
    for device_id in flooders:
        requests.post(stack.server_url + "/v1/enroll", timeout=30, json={
            "device_id": device_id, "enrollment_token": stack.enrollment_token, "hw": {}}).raise_for_status()
    doc: dict[str, Any] = {}
    total = len(cluster.replicas)
    for replicas in sorted({1, total}):
        for index in range(total):
            if index >= replicas:
                cluster.replicas[index].stop()
            elif cluster.replicas[index].proc.poll() is not None:
                cluster.restart(index, timeout=90)
        cluster.wait_proxy_sees({f"replica-{i}": "UP" if i < replicas else "DOWN" for i in range(total)},
                                timeout=60)
        time.sleep(2.0)  # the shared subscription has every remaining replica
        doc[f"replicas_{replicas}"] = {
            "ingest": ingest_rate(stack, messages, flooders, epoch=replicas),
            "checkin": checkin_rate(stack, devices, checkin_s)}
    return doc

"""Fleet simulator: N virtual devices on asyncio against the real update server and MQTT broker.

Each device enrolls (POST /v1/enroll, device_class and hw.runtimes=["onnxruntime"]), holds an MQTT
session (will at connect, retained birth, Telemetry every interval, update events), checks its
manifest every poll interval with jitter (If-None-Match, mostly 304), and applies updates for real:
Ed25519 signature, artifact download checked by sha256, UpdateReports downloading → installing →
trial → committed (or rolled_back for --fail-fraction of them).

The run: start Mosquitto (else amqtt) and ``edgefleet-server run`` on free loopback ports (or use
--server/--broker), upload model v1 (the devices ship with it) and v2, start the fleet, measure a
steady window (check-in latency, telemetry stored by the server per second), then roll v2 out in
gated waves and time each wave and the whole rollout. CPU of every process is sampled, so the
report says which side saturated. Everything it started is stopped at the end.

    .venv/bin/python benchmarks/fleet_sim.py --devices 1000
    .venv/bin/python benchmarks/fleet_sim.py --sweep 100,1000,10000 --json --plot docs/img/fleet_sim.png
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._fleet.device import CHECK_MIN_INTERVAL_S, FleetSpec
from benchmarks._fleet.scaleout import ReplicaKiller, capacity, losses, start_scaled
from benchmarks._fleet.stack import Operator, TelemetryCounter, existing, start_local
from benchmarks._fleet.stats import percentile, summary
from benchmarks._fleet.worker import raise_nofile, worker_main
from edgefleet.server.config import RolloutsSection
from edgefleet.server.rollouts import Gates

MODEL = "fleet-sim"
ROLLOUT_POLL_S = 1.0  # how often the run asks the server how its rollout stands


@dataclass
class Options:
    devices: int = 100
    workers: int = 0  # 0: one per 2,000 devices, at most the CPU count
    poll_s: float = 15.0
    telemetry_s: float = 10.0  # the agent's telemetry.interval_s default
    trial_s: float = 1.0
    steady_s: float = 0.0  # 0: two poll intervals
    waves: list[float] = field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    soak_s: float = 5.0
    min_committed_ratio: float = 1.0
    max_failure_ratio: float = 0.1
    max_p95_regression: float | None = 1.5
    latency_warmup_s: float | None = None  # the p95 gate's warm-up after a device commits (None: the server's 10 s)
    fail_fraction: float = 0.0
    regression: float = 1.0
    max_seconds: float = 900.0
    http_connections: int = 0  # 0: one per device, as real devices; N: N shared per worker
    broker: str = "auto"
    server: str | None = None
    admin_token: str | None = None
    enrollment_token: str | None = None
    public_key: Path | None = None
    broker_address: str | None = None
    mqtt_v5: bool = True
    seed: int = 1
    quiet: bool = False
    checkins_csv: Path | None = None  # every check-in: seconds since the rollout started, ms, HTTP status
    # scale-out (docs/deploying.md): replicas behind HAProxy; 0 is the single server of the default stack
    replicas: int = 0
    database: str = "sqlite"  # sqlite | postgresql
    storage: str = "local"  # local | s3 (SeaweedFS)
    kill_replica_at: float | None = None  # seconds into the rollout: SIGKILL the replica leading it
    restart_after_s: float = 5.0  # ... and start it again this much later
    lease_ttl_s: float = 5.0
    capacity_messages: int = 0  # > 0: ingestion and check-in capacity with 1 and with all replicas after
    capacity_checkin_s: float = 10.0
    # push (docs/rollouts.md): rollouts publish check_update and the devices check in when told; off, the
    # rollouts are created with push false and devices learn at their polls
    push: bool = False
    push_spread_s: float | None = None  # the server's rollouts.push_spread_s (None: its default)
    push_rate_per_s: float | None = None  # the server's rollouts.push_rate_per_s (None: its default)
    push_max_in_flight: int | None = None  # the server's rollouts.push_max_in_flight (None: its default; 0: off)

    @property
    def scaled(self) -> bool:
        return self.replicas > 0 or self.database != "sqlite" or self.storage != "local"


class Deadline(Exception):
    pass


class Run:
    """One simulation at one fleet size."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.max_seconds
        self.progress: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        self.crashes: list[str] = []
        self.last_print = 0.0

    # --- helpers -----------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if not self.o.quiet:
            print(f"[fleet-sim {time.monotonic() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def total(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in self.progress.values())

    def running(self, version: int) -> int:
        return sum(int(p.get("running", {}).get(version, 0)) for p in self.progress.values())

    def outcome(self, kind: str) -> int:
        return sum(int(p.get("outcomes", {}).get(kind, 0)) for p in self.progress.values())

    def drain(self, out: Any, timeout: float = 0.0) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                kind, index, payload = out.get(timeout=max(0.0, end - time.monotonic()))
            except Exception:  # queue.Empty
                return
            if kind == "progress":
                self.progress[index] = payload
            elif kind == "final":
                self.finals[index] = payload
                self.progress[index] = payload
            else:
                self.crashes.append(str(payload))
                raise RuntimeError(f"worker {index} crashed:\n{payload}")
            timeout = 0.0
            end = time.monotonic()

    def idle(self, out: Any, seconds: float) -> None:
        """Keep draining progress for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.drain(out, min(left, 1.0))
            if left > 0.05:
                time.sleep(min(0.05, left))

    def wait_for(self, out: Any, what: str, done: Any, limit: float) -> float:
        """Drain progress until ``done()``; seconds taken. Raises Deadline past ``limit`` or the run's end."""
        started = time.monotonic()
        end = min(self.deadline, started + limit)
        while not done():
            if time.monotonic() > end:
                raise Deadline(f"{what}: not done after {time.monotonic() - started:.0f}s")
            self.drain(out, 0.5)
            if time.monotonic() - self.last_print > 5:
                self.last_print = time.monotonic()
                self.log(f"{what}: enrolled {self.total('enrolled')}/{self.o.devices}, mqtt "
                         f"{self.total('connected')}, check-ins {self.total('checkins')}, telemetry sent "
                         f"{self.total('telemetry_sent')}, on v2 {self.running(2)}, errors "
                         f"{sum(sum(p.get('errors', {}).values()) for p in self.progress.values())}")
        return time.monotonic() - started


class CpuMeter:
    """CPU used by each process of the run between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if psutil.pid_exists(pid)}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            return 0.0

    def start(self) -> None:
        self.began = time.monotonic()
        self.base = {name: self._cpu(p) for name, p in self.procs.items()}
        psutil.cpu_percent(None)
        self.machine_base = psutil.cpu_times()

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.began)
        # a process killed and started again (a scale-out run's replica) counts as 0 from then on
        doc = {name: round(max(0.0, self._cpu(p) - self.base[name]) / wall * 100, 1) for name, p in self.procs.items()}
        now = psutil.cpu_times()
        busy = sum(getattr(now, f) - getattr(self.machine_base, f) for f in ("user", "system", "nice", "irq",
                                                                                "softirq", "steal"))
        total = busy + (now.idle - self.machine_base.idle) + (now.iowait - self.machine_base.iowait)
        doc["machine_pct_of_all_cores"] = round(busy / max(1e-6, total) * 100, 1)
        ours = sum(v for k, v in doc.items() if k != "machine_pct_of_all_cores")
        doc["others_pct"] = round(max(0.0, doc["machine_pct_of_all_cores"] * psutil.cpu_count() - ours), 1)
        return doc


def settings_doc(o: Options) -> dict[str, Any]:
    """The fleet's and the rollout's settings the figures depend on, as the run used them."""
    server = RolloutsSection()
    return {"device_telemetry_interval_s": o.telemetry_s, "device_poll_s": o.poll_s,
            "device_check_min_interval_s": CHECK_MIN_INTERVAL_S, "trial_s": o.trial_s,
            "gates": {"max_p95_regression": o.max_p95_regression, "soak_s": o.soak_s,
                      "min_committed_ratio": o.min_committed_ratio, "max_failure_ratio": o.max_failure_ratio,
                      **{f"latency_{k}": v for k, v in asdict(Gates().latency()).items() if k != "max_ratio"},
                      **({} if o.latency_warmup_s is None else {"latency_warmup_s": o.latency_warmup_s})},
            "push": o.push, "push_spread_s": server.push_spread_s if o.push_spread_s is None else o.push_spread_s,
            "push_rate_per_s": server.push_rate_per_s if o.push_rate_per_s is None else o.push_rate_per_s,
            "push_max_in_flight": server.push_max_in_flight if o.push_max_in_flight is None
            else o.push_max_in_flight}


def update_cost_ms(steady: dict[str, float], rollout: dict[str, float], seconds: float, updated: int) -> float | None:
    """Server CPU per device updated (check-in, download, reports, events, gate work), in ms of one core: its
    CPU during the rollout less what the steady load (telemetry, polls) costs in as long; what sizes
    ``rollouts.push_rate_per_s`` (docs/rollouts.md)."""
    if not updated or "server" not in steady or "server" not in rollout:
        return None
    return round(max(0.0, rollout["server"] - steady["server"]) / 100 * seconds / updated * 1000, 2)


def verdict(cpu: dict[str, float], lag_p99_ms: float | None) -> str:
    cores = psutil.cpu_count() or 1
    sim = sum(v for k, v in cpu.items() if k.startswith("worker"))
    if "server" not in cpu:  # replicas: the busiest one
        cpu = {**cpu, "server": max((v for k, v in cpu.items() if k.startswith("server")), default=0.0)}
    parts = f"server {cpu.get('server', 0):.0f}%, broker {cpu.get('broker', 0):.0f}%, simulator {sim:.0f}%, " \
            f"other processes {cpu.get('others_pct', 0):.0f}% (% of one core; {cores} cores)"
    if cpu.get("server", 0) >= 85:
        return f"the server saturated (its Python process near one full core): {parts}"
    if lag_p99_ms is not None and lag_p99_ms > 100:
        return f"the simulator saturated (event-loop lag p99 {lag_p99_ms:.0f} ms): {parts}"
    if cpu.get("broker", 0) >= 85:
        return f"the broker saturated: {parts}"
    if cpu.get("machine_pct_of_all_cores", 0) >= 90:
        return f"the machine's CPUs saturated (no single process at a full core): {parts}"
    return f"nothing saturated: {parts}"


def run_sim(options: Options, inspect: Callable[[Operator, list[str]], None] | None = None) -> dict[str, Any]:
    """One run at ``options.devices``; the result document (see docs/fleet-sim.md).

    ``inspect(operator, device_ids)`` is called after the rollout, while the server still runs.
    """
    raise_nofile()
    run = Run(options)
    o = options
    if o.server:
        if not (o.admin_token and o.enrollment_token and o.public_key and o.broker_address):
            raise ValueError("--server needs --admin-token, --enrollment-token, --public-key and --broker")
        stack = existing(server_url=o.server, admin_token=o.admin_token, enrollment_token=o.enrollment_token,
                         public_key=o.public_key, broker=o.broker_address, mqtt_v5=o.mqtt_v5)
    elif o.scaled:
        run.log(f"starting Mosquitto, {o.database}, {o.storage} storage, {max(1, o.replicas)} replica(s) and HAProxy")
        stack = start_scaled(replicas=max(1, o.replicas), database=o.database, storage=o.storage,
                             log_level="WARNING", rollout_tick_s=0.5, lease_ttl_s=o.lease_ttl_s)
    else:
        run.log(f"starting broker ({o.broker}) and server")
        pushing = {k: v for k, v in (("push_spread_s", o.push_spread_s), ("push_rate_per_s", o.push_rate_per_s),
                                     ("push_max_in_flight", o.push_max_in_flight)) if v is not None}
        stack = start_local(broker=o.broker, overrides={"rollouts": pushing} if pushing else None)
    ctx = mp.get_context("spawn")
    stop_flag = ctx.Event()
    out: Any = ctx.Queue()
    procs: list[Any] = []
    operator = Operator(stack)
    counter: TelemetryCounter | None = None
    killer = ReplicaKiller(stack.cluster, o.kill_replica_at, o.restart_after_s) \
        if stack.cluster is not None and o.kill_replica_at is not None else None
    rollout_id: int | None = None
    options_doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()
                   if k not in ("admin_token", "enrollment_token")}
    result: dict[str, Any] = {"devices": o.devices, "replicas": len(stack.cluster.replicas) if stack.cluster else 1,
                              "database": o.database, "storage": o.storage, "options": options_doc,
                              "settings": settings_doc(o)}
    try:
        stamp = time.strftime("%H%M%S")
        tag = f"fleet-sim-{stamp}"
        model = f"{MODEL}-{stamp}" if o.server else MODEL
        with tempfile.TemporaryDirectory() as tmp:
            from edgefleet.server.demo.models import make_classifier

            v1 = operator.upload(model, make_classifier(Path(tmp) / "v1.onnx", 1))
            v2 = operator.upload(model, make_classifier(Path(tmp) / "v2.onnx", 2))
        spec = FleetSpec(server_url=stack.server_url, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                         mqtt_v5=stack.mqtt_v5, enrollment_token=stack.enrollment_token,
                         public_key_pem=stack.public_key_pem, tag=tag, poll_s=o.poll_s, telemetry_s=o.telemetry_s,
                         trial_s=o.trial_s, fail_fraction=o.fail_fraction, regression=o.regression, model=model,
                         model_version=int(v1["version"]), model_sha256=str(v1["sha256"]), seed=o.seed,
                         push=o.push)
        device_ids = [f"sim-{stamp}-{i:05d}" for i in range(o.devices)]
        workers = o.workers or min(psutil.cpu_count() or 1, max(1, -(-o.devices // 2000)))
        result.update(workers=workers, broker=stack.broker_kind, mqtt="5" if stack.mqtt_v5 else "3.1.1",
                      server=stack.server_url, model=model, artifact_bytes=int(v2["size"]))
        counter = TelemetryCounter(stack, operator, device_ids)
        pids = dict(stack.pids)
        for index in range(workers):
            proc = ctx.Process(target=worker_main, name=f"fleet-sim-worker-{index}", daemon=True, args=(
                index, spec, device_ids[index::workers], stop_flag, out, o.http_connections))
            proc.start()
            procs.append(proc)
            pids[f"worker{index}"] = int(proc.pid or 0)
        run.log(f"{o.devices} devices on {workers} worker(s); broker {stack.broker_kind} on {stack.mqtt_port}, "
                f"server {stack.server_url}")
        budget = 60 + o.devices * 0.03
        enrolled_s = run.wait_for(out, "enrolling", lambda: run.total("enrolled") >= o.devices, budget)
        connected_s = enrolled_s + run.wait_for(out, "connecting", lambda: run.total("connected") >= o.devices,
                                                budget)
        result["fleet_up"] = {"enrolled_s": round(enrolled_s, 2), "all_connected_s": round(connected_s, 2),
                              "enroll_per_s": round(o.devices / max(enrolled_s, 1e-6), 1)}
        run.log(f"fleet up: enrolled in {enrolled_s:.1f}s, all connected after {connected_s:.1f}s")
        # every device's first telemetry is stored (its p95 becomes the rollout's baseline)
        run.wait_for(out, "first telemetry", lambda: counter.count() >= o.devices, o.telemetry_s * 3 + budget)

        # the fleet's desired state is v1, which every device already runs (committed at once, no download):
        # from now on check-ins carry an ETag and are answered 304 until the v2 rollout reaches the device
        baseline = operator.create_rollout({"model": model, "version": int(v1["version"]), "target": {"tags": [tag]},
                                            "waves": [100], "push": o.push,
                                            "gates": {"soak_s": 0, "max_p95_regression": None}})
        run.wait_for(out, "v1 as desired state", lambda: operator.rollout_summary(baseline["id"])["state"] ==
                     "completed", budget)
        # every device has fetched the v1 manifest once (within a poll interval), so steady check-ins are 304s;
        # with push nothing is pushed for it (the devices run v1 already): the v2 rollout's push brings them in
        if not o.push:
            run.wait_for(out, "v1 manifest fetched", lambda: run.total("fetched") >= o.devices,
                         o.poll_s * 1.3 + budget)
        run.idle(out, 1.0)

        # --- steady state ---------------------------------------------------------------------------
        steady_s = o.steady_s or 2 * max(o.poll_s, o.telemetry_s)
        meter = CpuMeter(pids)
        meter.start()
        steady_from = time.time()
        stored0, sent0, t_start = counter.count(), run.total("telemetry_sent"), time.monotonic()
        series = []
        while time.monotonic() - t_start < steady_s:
            run.drain(out, 1.0)
            series.append((round(time.monotonic() - t_start, 2), counter.count(), run.total("telemetry_sent")))
        elapsed = time.monotonic() - t_start
        stored1, sent1 = counter.count(), run.total("telemetry_sent")
        steady_to = time.time()
        steady_cpu = meter.stop()
        result["telemetry"] = {
            "sent_per_s": round((sent1 - sent0) / elapsed, 1), "stored_per_s": round((stored1 - stored0) / elapsed, 1),
            "offered_per_s": round(o.devices / o.telemetry_s, 1), "stored_rows": stored1,
            "count_method": counter.method,
            "series": series}
        run.log(f"steady {elapsed:.0f}s: telemetry stored {result['telemetry']['stored_per_s']}/s "
                f"(sent {result['telemetry']['sent_per_s']}/s), cpu {steady_cpu}")

        # --- gated rollout of v2 --------------------------------------------------------------------
        meter.start()
        rollout_from = time.time()
        created = time.monotonic()
        rollout = operator.create_rollout({
            "model": model, "version": int(v2["version"]), "target": {"tags": [tag]}, "waves": o.waves,
            "push": o.push,
            "gates": {"min_committed_ratio": o.min_committed_ratio, "max_failure_ratio": o.max_failure_ratio,
                      "max_p95_regression": o.max_p95_regression, "soak_s": o.soak_s,
                      **({} if o.latency_warmup_s is None else {"latency_warmup_s": o.latency_warmup_s})}})
        rollout_id = int(rollout["id"])
        if killer is not None:
            killer.arm()
        wave_log: dict[int, dict[str, float]] = {}
        state: dict[str, Any] = {"doc": rollout, "all_committed": None}
        target_v2 = o.devices

        polled = {"at": -math.inf}

        def rollout_done() -> bool:
            if killer is not None:
                killer.poll()
            now = time.monotonic() - created
            if state["all_committed"] is None and run.running(int(v2["version"])) >= target_v2:
                state["all_committed"] = round(now, 2)
            # the server's view at most once a second: GET /v1/rollouts costs the server what devices need
            if time.monotonic() - polled["at"] < ROLLOUT_POLL_S:
                return False
            polled["at"] = time.monotonic()
            doc = operator.rollout_summary(rollout_id)
            state["doc"] = doc
            for wave in doc["waves"]:
                entry = wave_log.setdefault(wave["index"], {})
                if wave["state"] != "pending" and "started_s" not in entry:
                    entry["started_s"] = round(now, 2)
                if wave["devices"] and wave["committed"] >= wave["devices"] and "all_committed_s" not in entry:
                    entry["all_committed_s"] = round(now, 2)
                if wave["state"] == "done" and "done_s" not in entry:
                    entry["done_s"] = round(now, 2)
            if doc["state"] in ("paused", "aborted"):
                return True
            return doc["state"] == "completed" and state["all_committed"] is not None

        timed_out = None
        try:
            run.wait_for(out, f"rollout {rollout_id}", rollout_done, run.deadline - time.monotonic())
        except Deadline as exc:
            timed_out = str(exc)
        rollout_to = time.time()
        rollout_cpu = meter.stop()
        doc = state["doc"]
        failed_on_server = sum(w["failed"] for w in doc["waves"])
        try:  # the server can see a failure before the worker's progress message says so
            run.wait_for(out, "outcomes", lambda: run.outcome("rolled_back") + run.outcome("rejected")
                         >= failed_on_server, 10.0)
        except Deadline as exc:
            run.log(str(exc))
        result["rollout"] = {
            "id": rollout_id, "state": doc["state"], "reason": doc.get("reason"), "timed_out": timed_out,
            "waves_spec": o.waves, "soak_s": o.soak_s,
            "all_committed_s": state["all_committed"], "all_on_target_s": state["all_committed"],
            "completed_s": round(doc["updated_at"] - doc["created_at"], 2) if doc["state"] == "completed" else None,
            "devices_on_v2": run.running(int(v2["version"])), "rolled_back": run.outcome("rolled_back"),
            "waves": [{"index": w["index"], "size": w["size"], "devices": w["devices"], "committed": w["committed"],
                       "failed": w["failed"], **wave_log.get(w["index"], {})} for w in doc["waves"]]}
        result["rollout"]["server_cpu_ms_per_update"] = update_cost_ms(
            steady_cpu, rollout_cpu, rollout_to - rollout_from, run.running(int(v2["version"])))
        run.log(f"rollout {rollout_id}: {doc['state']} {doc.get('reason') or ''}; all devices on v2 after "
                f"{state['all_committed']}s; server CPU {result['rollout']['server_cpu_ms_per_update']} ms per "
                f"device updated (above the steady load)")
        result["push"] = {"enabled": o.push, **_server_push_counters(operator)}
        if inspect is not None:
            inspect(operator, device_ids)
    except Deadline as exc:
        result["timed_out"] = str(exc)
        run.log(f"stopped: {exc}")
        steady_from = steady_to = rollout_from = rollout_to = 0.0
        steady_cpu = rollout_cpu = {}
    finally:
        stop_flag.set()
        end = time.monotonic() + 30
        while len(run.finals) < len(procs) and time.monotonic() < end and not run.crashes:
            try:
                run.drain(out, 1.0)
            except RuntimeError:
                break
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        try:
            if stack.cluster is not None and rollout_id is not None and not run.crashes:
                result.update(_scale_out_figures(run, stack, operator, killer, rollout_id, model, v2, stamp))
        finally:
            if counter is not None:
                counter.close()
            operator.close()
            stack.stop()
    result.update(_device_side(run, steady_from, steady_to, rollout_from, rollout_to))
    result["cpu_steady"], result["cpu_rollout"] = steady_cpu, rollout_cpu
    result["saturated_steady"] = verdict(steady_cpu, result["loop_lag_ms"]["p99"]) if steady_cpu else None
    result["saturated_rollout"] = verdict(rollout_cpu, result["loop_lag_ms"]["p99"]) if rollout_cpu else None
    result["checkin_p99_on_connection_ms"] = result["checkin_rollout"]["on_connection"]["p99_ms"]
    result["all_on_target_s"] = result.get("rollout", {}).get("all_on_target_s")
    pushed_at = sorted(x for f in run.finals.values() for x in f.get("push_t", []))
    result.setdefault("push", {"enabled": o.push}).update(
        received=len(pushed_at), received_during_rollout=sum(rollout_from <= x <= rollout_to for x in pushed_at))
    result["wall_s"] = round(time.monotonic() - run.t0, 1)
    return result


def _server_push_counters(operator: Operator) -> dict[str, float | None]:
    """The server's push counters from /metrics (one replica's: the one the load balancer asked)."""
    try:
        text = operator.http.get("/metrics").text
    except Exception:  # figures only: a run without them still reports the rest
        return {"server_sent": None, "server_failed": None}
    found = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith(("edgefleet_push_sent_total ", "edgefleet_push_failed_total "))}
    return {"server_sent": found.get("edgefleet_push_sent_total"),
            "server_failed": found.get("edgefleet_push_failed_total")}


def _scale_out_figures(run: Run, stack: Any, operator: Operator, killer: ReplicaKiller | None, rollout_id: int,
                       model: str, v2: dict[str, Any], stamp: str) -> dict[str, Any]:
    """What the failure cost (reports, telemetry and events lost or stored twice) and, when asked, the capacity
    with 1 and with every replica."""
    o = run.o
    doc: dict[str, Any] = {"kill": killer.join() if killer is not None else None}
    members = {d["device_id"]: d["state"] for d in operator.rollout(rollout_id)["devices"]}
    doc["devices_on_target"] = sum(1 for d, state in members.items() if state == "committed")
    doc.update(losses(stack.db_url, f"sim-{stamp}-", list(run.finals.values()), members))
    run.log(f"lost: reports {doc['reports_lost']}, telemetry {doc['telemetry_lost']} "
            f"(duplicated {doc['telemetry_duplicated']}), events {doc['events_lost']}; kill {doc['kill']}")
    errors = [line for replica in stack.cluster.replicas for line in replica.log().splitlines()
              if " ERROR " in line or " CRITICAL " in line]
    doc["server_errors"] = {"count": len(errors), "samples": errors[:10]}
    if o.capacity_messages > 0:
        run.log(f"capacity with 1 and {len(stack.cluster.replicas)} replicas")
        doc["capacity"] = capacity(stack, operator, model=model, version=int(v2["version"]),
                                   messages=o.capacity_messages, checkin_s=o.capacity_checkin_s)
    return doc


def _device_side(run: Run, steady_from: float, steady_to: float, rollout_from: float,
                 rollout_to: float) -> dict[str, Any]:
    finals = list(run.finals.values())
    t = [x for f in finals for x in f["checkin_t"]]
    ms = [x for f in finals for x in f["checkin_ms"]]
    status = [x for f in finals for x in f["checkin_status"]]
    queued = [x for f in finals for x in f["checkin_queued_ms"]]

    def window(lo: float, hi: float) -> dict[str, Any]:
        picked = [(m, s) for ti, m, s in zip(t, ms, status, strict=True) if lo <= ti <= hi]
        doc: dict[str, Any] = summary([m for m, _ in picked])
        # the same check-ins less the wait for one of the simulator's pooled connections: what a device with
        # its own connection would see
        doc["on_connection"] = summary([m - q for ti, m, q in zip(t, ms, queued, strict=True) if lo <= ti <= hi])
        doc["share_304"] = round(sum(s == 304 for _, s in picked) / len(picked), 3) if picked else None
        doc["per_s"] = round(len(picked) / (hi - lo), 1) if hi > lo else None
        doc["by_status"] = {str(code): sum(s == code for _, s in picked) for code in sorted({s for _, s in picked})}
        doc["p99_ms_by_status"] = {str(code): percentile([m for m, s in picked if s == code], 99)
                                   for code in sorted({s for _, s in picked})}
        return doc

    if run.o.checkins_csv is not None:
        with run.o.checkins_csv.open("w") as out:
            out.write("t_from_rollout_s,ms,status,queued_ms\n")
            for ti, m, s, q in sorted(zip(t, ms, status, queued, strict=True)):
                out.write(f"{ti - rollout_from:.3f},{m:.2f},{s},{q:.2f}\n")

    lag = [x for f in finals for x in f["loop_lag_ms"]]
    errors: dict[str, int] = {}
    for f in finals:
        for kind, n in f["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "checkin_steady": window(steady_from, steady_to), "checkin_rollout": window(rollout_from, rollout_to),
        "checkin_all": window(min(t, default=0.0), max(t, default=0.0)),
        "telemetry_puback": summary([x for f in finals for x in f["publish_ms"]]),
        "loop_lag_ms": {"p50": percentile(lag, 50), "p99": percentile(lag, 99), "max": max(lag, default=None)},
        "device_totals": {k: sum(int(f[k]) for f in finals) for k in (
            "enrolled", "connects", "checkins", "telemetry_sent", "events_sent", "reports_sent", "downloads")},
        "outcomes": {k: sum(int(f["outcomes"].get(k, 0)) for f in finals) for k in (
            "committed", "rolled_back", "rejected")},
        "errors": errors, "error_samples": [s for f in finals for s in f["error_samples"]][:10],
        "workers_reported": len(finals),
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["devices"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("checkin_steady", "steady"), ("checkin_rollout", "during rollout")):
        left.plot(sizes, [r.get(key, {}).get("p99_ms") or float("nan") for r in results], "o-", label=f"p99 {label}")
    left.plot(sizes, [r.get("checkin_steady", {}).get("p50_ms") or float("nan") for r in results], "s--",
              label="p50 steady")
    left.set(xscale="log", yscale="log", xlabel="devices", ylabel="check-in latency (ms)",
             title="manifest check-in latency")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(sizes, [r.get("rollout", {}).get("all_committed_s") or float("nan") for r in results], "o-",
               label="every device committed")
    right.plot(sizes, [r.get("rollout", {}).get("completed_s") or float("nan") for r in results], "s--",
               label="rollout completed (last soak)")
    right.set(xscale="log", xlabel="devices", ylabel="seconds", title="gated rollout 1/10/50/100 %")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    poll = results[0]["options"]["poll_s"] if results else 0
    fig.suptitle(f"edgefleet fleet simulator, loopback, {psutil.cpu_count()} cores, poll {poll:g}s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    def f(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| devices | enroll/s | check-in p50 / p95 / p99 ms (steady) | p99 during rollout | telemetry "
             "stored/s (offered) | rollout: all committed s | waves done at s | saturated |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cs, cr, tel, ro = r.get("checkin_steady", {}), r.get("checkin_rollout", {}), r.get("telemetry", {}), \
            r.get("rollout", {})
        waves = ", ".join(f(w.get("done_s")) for w in ro.get("waves", []))
        lines.append(
            f"| {r['devices']} | {f(r.get('fleet_up', {}).get('enroll_per_s'))} | {f(cs.get('p50_ms'))} / "
            f"{f(cs.get('p95_ms'))} / {f(cs.get('p99_ms'))} | {f(cr.get('p99_ms'))} | {f(tel.get('stored_per_s'))} "
            f"({f(tel.get('offered_per_s'))}) | {f(ro.get('all_committed_s'))} | {waves} | "
            f"{(r.get('saturated_rollout') or r.get('timed_out') or '-').split(':')[0]} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--sweep", help="fleet sizes, e.g. 100,1000,10000 (one run each; a plot with --plot)")
    p.add_argument("--workers", type=int, default=0, help="device processes (0: one per 2,000 devices)")
    p.add_argument("--poll", type=float, default=15.0, help="manifest check-in interval, s (±10%% jitter)")
    p.add_argument("--telemetry", type=float, default=10.0,
                   help="telemetry interval, s (default: the agent's telemetry.interval_s, 10 s; the p95 gate needs "
                        "3 messages a device after commit + a 10 s warm-up)")
    p.add_argument("--trial", type=float, default=1.0, help="seconds each device spends in trial")
    p.add_argument("--steady", type=float, default=0.0, help="steady window before the rollout, s (0: 2 intervals)")
    p.add_argument("--waves", default="1,10,50,100", help="cumulative percents")
    p.add_argument("--soak", type=float, default=5.0)
    p.add_argument("--min-committed", type=float, default=1.0)
    p.add_argument("--max-failure", type=float, default=0.1)
    p.add_argument("--fail-fraction", type=float, default=0.0, help="share of devices whose trial rolls back")
    p.add_argument("--regression", type=float, default=1.0, help="latency factor of v2 (the p95 gate is x1.5)")
    p.add_argument("--latency-warmup", type=float, metavar="S",
                   help="seconds after a commit the p95 gate ignores (default: the server's 10 s)")
    p.add_argument("--max-p95-regression", default="1.5", metavar="RATIO|none",
                   help="the rollout's p95 latency gate (none: off, e.g. to measure the update path alone)")
    p.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on one run")
    p.add_argument("--http-connections", type=int, default=0,
                   help="0 (default): every device its own HTTP connection, opened for a check-in and the update "
                        "it brings, closed after, as a real device; N: N keep-alive connections shared by each "
                        "worker's devices (requests then queue in the simulator: see checkin_*.on_connection)")
    p.add_argument("--broker-kind", default="auto", choices=("auto", "mosquitto", "amqtt"))
    p.add_argument("--server", help="use this server instead of starting one (needs the next four)")
    p.add_argument("--admin-token")
    p.add_argument("--enrollment-token")
    p.add_argument("--public-key", type=Path)
    p.add_argument("--broker", help="HOST:PORT of an existing broker")
    p.add_argument("--mqtt", choices=("5", "3.1.1"), default="5")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--plot", type=Path, help="PNG of check-in p99 and rollout time against fleet size")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--checkins-csv", type=Path, help="write every check-in (t from the rollout, ms, status) here")
    scale = p.add_argument_group("scale-out (docs/deploying.md)")
    scale.add_argument("--replicas", type=int, default=0, help="server replicas behind HAProxy (0: one plain server)")
    scale.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    scale.add_argument("--storage", choices=("local", "s3"), default="local", help="s3: a SeaweedFS the run starts")
    scale.add_argument("--kill-replica-at", type=float, metavar="SECONDS",
                       help="SIGKILL the replica leading the rollout this long after it starts")
    scale.add_argument("--restart-after", type=float, default=5.0, help="seconds before the killed replica restarts")
    scale.add_argument("--lease-ttl", type=float, default=5.0, help="leader lease, s (a dead leader's replacement)")
    scale.add_argument("--capacity-messages", type=int, default=0,
                       help="> 0: after the rollout, ingest this many messages and measure check-ins/s with 1 and "
                            "with all replicas")
    scale.add_argument("--capacity-checkin-s", type=float, default=10.0)
    pushed = p.add_argument_group("push (docs/rollouts.md)")
    pushed.add_argument("--push", action="store_true",
                        help="rollouts push check_update; devices subscribe to their commands topic and check in "
                             "when told (without it rollouts are created with push false)")
    pushed.add_argument("--push-spread", type=float, metavar="S", help="the server's rollouts.push_spread_s")
    pushed.add_argument("--push-rate", type=float, metavar="N", help="the server's rollouts.push_rate_per_s")
    pushed.add_argument("--push-window", type=int, metavar="N",
                        help="the server's rollouts.push_max_in_flight (0: no window, the rate alone)")
    args = p.parse_args(argv)
    try:
        waves = [float(w) for w in args.waves.split(",")]
    except ValueError:
        p.error(f"--waves must be numbers separated by commas, not {args.waves!r}")
    try:
        max_p95 = None if args.max_p95_regression.lower() == "none" else float(args.max_p95_regression)
    except ValueError:
        p.error(f"--max-p95-regression must be a ratio or none, not {args.max_p95_regression!r}")
    if args.devices < 1 or not 0 <= args.fail_fraction <= 1 or args.poll <= 0 or args.telemetry <= 0:
        p.error("--devices must be ≥ 1, --fail-fraction in 0..1, --poll and --telemetry > 0")
    if args.replicas > 1 and args.database != "postgresql":
        p.error("--replicas above 1 needs --database postgresql")
    if args.kill_replica_at is not None and args.replicas < 2:
        p.error("--kill-replica-at needs --replicas 2 or more")
    options = Options(devices=args.devices, workers=args.workers, poll_s=args.poll, telemetry_s=args.telemetry,
                      trial_s=args.trial, steady_s=args.steady, waves=waves, soak_s=args.soak,
                      min_committed_ratio=args.min_committed, max_failure_ratio=args.max_failure,
                      fail_fraction=args.fail_fraction, regression=args.regression, max_p95_regression=max_p95,
                      max_seconds=args.max_seconds, latency_warmup_s=args.latency_warmup,
                      http_connections=args.http_connections, broker=args.broker_kind, server=args.server,
                      admin_token=args.admin_token, enrollment_token=args.enrollment_token,
                      public_key=args.public_key, broker_address=args.broker, mqtt_v5=args.mqtt == "5",
                      quiet=args.quiet, checkins_csv=args.checkins_csv, replicas=args.replicas,
                      database=args.database, storage=args.storage, kill_replica_at=args.kill_replica_at,
                      restart_after_s=args.restart_after, lease_ttl_s=args.lease_ttl,
                      capacity_messages=args.capacity_messages, capacity_checkin_s=args.capacity_checkin_s,
                      push=args.push, push_spread_s=args.push_spread, push_rate_per_s=args.push_rate,
                      push_max_in_flight=args.push_window)
    return options, args


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through run_sim's cleanup


def main(argv: list[str] | None = None) -> int:
    options, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sizes = [int(s) for s in args.sweep.split(",")] if args.sweep else [options.devices]
    except ValueError:
        print(f"fleet_sim: --sweep must be integers separated by commas, not {args.sweep!r}", file=sys.stderr)
        return 2
    results = []
    try:
        for size in sizes:
            results.append(run_sim(replace(options, devices=size)))
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"fleet_sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet_sim: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if args.plot and results:
            plot(results, args.plot)
    if args.json:
        print(json.dumps({"machine": {"cpus": psutil.cpu_count(), "mem_gb": round(psutil.virtual_memory().total
                                                                                  / 2**30, 1)},
                          "runs": results}, indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

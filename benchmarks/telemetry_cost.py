"""What the agent's telemetry costs, against a bare baseline measured in the same run.

    .venv/bin/python benchmarks/telemetry_cost.py [--seconds 30] [--hz 100] [--spool-messages 5000]

1. CPU: a 100 Hz "inference" loop that does nothing else, for --seconds, once bare and once
   calling Telemetry.record_inference with telemetry running (1 message/s to a real Mosquitto).
   The difference in process CPU time (all threads), as % of one core, is the telemetry cost.
2. record_inference: ns per call in a tight loop (the hot path).
3. Spool: append rate (messages/s, a ~700-byte telemetry document each) and replay rate
   (messages/s from a full spool to broker PUBACK, in order, deleted on ack).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.telemetry import Spool, Telemetry
from edgefleet.agent.wire import ModelMeta
from tests.support.broker import Mosquitto


def _config(state: Path, port: int, interval_s: float) -> AgentConfig:
    return AgentConfig.model_validate({
        "device_id": "bench-01", "state_dir": str(state), "api": {"listen": None},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                 "max_inflight": 256},
        "telemetry": {"interval_s": interval_s, "spool_max_mb": 256}})


def _paced_loop(seconds: float, hz: float, call: object) -> float:
    """Process CPU seconds spent while running ``call(latency, ok)`` at ``hz`` for ``seconds``."""
    fn = call  # type: ignore[assignment]
    period = 1.0 / hz
    cpu0 = time.process_time()
    start = time.monotonic()
    next_t = start
    i = 0
    while True:
        next_t += period
        fn(0.004 + (i % 50) * 1e-4, i % 97 != 0)  # type: ignore[operator]
        i += 1
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - start >= seconds:
            break
    return time.process_time() - cpu0


def cpu_cost(broker: Mosquitto, workdir: Path, seconds: float, hz: float) -> dict[str, float]:
    bare = _paced_loop(seconds, hz, lambda latency, ok: None)
    tel = Telemetry(_config(workdir / "cpu", broker.port, 1.0), hw={}, agent_version="bench")
    tel.set_model(ModelMeta(name="m", version=1), "onnxruntime", "CPUExecutionProvider")
    tel.start()
    deadline = time.monotonic() + 10
    while not tel.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    with_tel = _paced_loop(seconds, hz, tel.record_inference)
    sent = tel.stats["sent"]
    tel.stop()
    return {"bare_pct": 100 * bare / seconds, "with_telemetry_pct": 100 * with_tel / seconds,
            "telemetry_pct": 100 * (with_tel - bare) / seconds, "messages_sent": sent}


def hot_path_ns(workdir: Path, n: int = 200_000) -> dict[str, float]:
    tel = Telemetry(_config(workdir / "hot", 1, 3600), hw={}, agent_version="bench")
    t0 = time.perf_counter()
    for _ in range(n):
        pass
    empty = time.perf_counter() - t0
    rec = tel.record_inference
    t0 = time.perf_counter()
    for i in range(n):
        rec(0.001 * (i % 100 + 1), True)
    full = time.perf_counter() - t0
    tel.stop()
    return {"record_inference_ns": 1e9 * (full - empty) / n}


def spool_rates(broker: Mosquitto, workdir: Path, n: int) -> dict[str, float]:
    doc = {"seq": 0, "ts": time.time(), "model": {"name": "m", "version": 1, "sha256": "ab" * 32},
           "runtime": "onnxruntime", "delegate": "CPUExecutionProvider",
           "inference": {"count": 100, "errors": 0, "latency_ms": {"p50": 4.1, "p95": 6.2, "p99": 7.9, "max": 9.0},
                         "fps": 10.0, "dropped_frames": 0},
           "system": {"cpu_pct": 12.5, "mem_mb": 812.3, "rss_mb": 95.1, "temp_c": 48.2, "disk_free_mb": 10240.0,
                      "uptime_s": 3600.0}, "spool": {"queued": 0, "dropped": 0, "errors": 0, "sent": 0}}
    state = workdir / "spool"
    spool = Spool(state / "telemetry-spool.db", max_bytes=256 << 20, max_age_s=86400)

    def build(seq: int) -> bytes:
        doc["seq"] = seq
        return json.dumps(doc, separators=(",", ":")).encode()

    t0 = time.perf_counter()
    for _ in range(n):
        spool.append("telemetry", build)
    write_s = time.perf_counter() - t0
    size = len(build(1))
    spool.close()
    tel = Telemetry(_config(state, broker.port, 3600), hw={}, agent_version="bench")
    t0 = time.perf_counter()
    tel.start()
    while tel.stats["queued"] > 0 and time.perf_counter() - t0 < 120:
        time.sleep(0.01)
    replay_s = time.perf_counter() - t0
    left = tel.stats["queued"]
    tel.stop()
    return {"messages": n, "bytes_each": size, "write_per_s": n / write_s,
            "replay_per_s": (n - left) / replay_s, "left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hz", type=float, default=100.0)
    parser.add_argument("--spool-messages", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "broker").mkdir()
        broker = Mosquitto(workdir / "broker").start()
        try:
            cpu = cpu_cost(broker, workdir, args.seconds, args.hz)
            hot = hot_path_ns(workdir)
            spool = spool_rates(broker, workdir, args.spool_messages)
        finally:
            broker.stop()
    print(f"telemetry CPU at 1 message/s, record_inference at {args.hz:g} Hz, over {args.seconds:g} s:")
    print(f"  bare loop        {cpu['bare_pct']:.3f} % of one core")
    print(f"  with telemetry   {cpu['with_telemetry_pct']:.3f} % of one core")
    print(f"  telemetry cost   {cpu['telemetry_pct']:.3f} % of one core  (target < 1 %; "
          f"{cpu['messages_sent']} messages acked)")
    print(f"record_inference   {hot['record_inference_ns']:.0f} ns per call")
    print(f"spool ({spool['messages']} messages of {spool['bytes_each']} bytes):")
    print(f"  write            {spool['write_per_s']:.0f} messages/s")
    print(f"  replay to PUBACK {spool['replay_per_s']:.0f} messages/s (left in spool: {spool['left']})")


if __name__ == "__main__":
    main()

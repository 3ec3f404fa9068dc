"""End-to-end throughput of the agent daemon vs the bare runtime, and its memory over time.

    .venv/bin/python benchmarks/daemon_throughput.py                 # quick: 30 s daemon run
    .venv/bin/python benchmarks/daemon_throughput.py --duration 600  # RSS after 10 min vs after 1 min

A ~1 ms ONNX model (two 3x3 convolutions on a 3x64x64 input, then a classifier head) is loaded
through the runtime layer. The bare baseline calls ``model.infer`` in a loop on one fixed tensor.
The daemon runs in this process (``Agent``: synthetic source → pre-processing → mailbox →
ModelHost → post-processing → results, with telemetry recording every inference and publishing to
a local Mosquitto when one is installed) with the source producing frames faster than the model
can take them, so throughput is bounded by inference; the ratio shows what the daemon adds.
Frames are generated at the model's input size, so pre-processing is colour conversion, the
fused scale and the layout change (no resize). Then, each in a process of its own
(``benchmarks/_daemon_procs.py``), the bare runtime holding the model against
``edgefleet-agent run`` with ``source: none`` and with a video file: RSS and start-up.
Targets (issue 16): throughput >= 0.97 of bare; RSS with ``source: none`` <= 1.25x the bare
process, <= 1.35x with a video source; start-up to READY <= 1.5x the bare import + load; RSS at
the end within 5% of RSS at the first minute (or at a fifth of a shorter run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _daemon_procs
from edgefleet.agent.config import AgentConfig, RuntimeSection
from edgefleet.agent.daemon.main import Agent, tune_interpreter
from edgefleet.agent.daemon.modelload import load_model


def make_model(path: Path, channels: int, size: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    head = rng.standard_normal((channels, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Bare:
    """The baseline: ``model.infer`` in a tight loop on one fixed tensor."""

    def __init__(self, path: Path, runtime: RuntimeSection, size: int) -> None:
        self.model = load_model(path, runtime, None)
        self.feeds = {"image": np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)}
        for _ in range(50):
            self.model.infer(self.feeds)

    def rate(self, seconds: float) -> float:
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            self.model.infer(self.feeds)
            count += 1
        return count / elapsed


def daemon_rate(agent: Agent, seconds: float) -> float:
    """Feed the daemon for ``seconds`` (source on), count what it inferred, then idle it (source off)."""
    assert agent.loop is not None
    agent._start_source(agent.config)
    time.sleep(0.3)  # the first frames, off the clock
    first, start = agent.loop.processed, time.perf_counter()
    time.sleep(seconds)
    rate = (agent.loop.processed - first) / (time.perf_counter() - start)
    if agent.runner is not None:
        agent.runner.stop()
        agent.runner = None
    time.sleep(0.05)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds the daemon runs (600: ten minutes)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating bare/daemon throughput windows")
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds of each window")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads for both (0: one per core)")
    parser.add_argument("--channels", type=int, default=36, help="model width; 36 is ~1 ms on one x86 core")
    parser.add_argument("--results", action="store_true", help="also write every result to a JSON-lines file")
    parser.add_argument("--procs-runs", type=int, default=3,
                        help="bare/daemon process pairs for RSS and start-up (0: skip)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    size = 64
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    path = make_model(work / "bench.onnx", args.channels, size)
    runtime = RuntimeSection(prefer="onnxruntime", delegate="auto", threads=args.threads, autotune=False)

    baseline = Bare(path, runtime, size)
    with _daemon_procs.broker(work) as mqtt_port:  # telemetry publishes, as on a device
        config = AgentConfig.model_validate({
            "device_id": "bench", "state_dir": str(work / "state"),
            "model": {"path": str(path), "task": "classification"},
            "runtime": runtime.model_dump(),
            "source": {"kind": "synthetic", "uri": f"{size}x{size}", "fps": 100000},
            "api": {"listen": None},
            "mqtt": {"enabled": mqtt_port is not None, "host": "127.0.0.1", "port": mqtt_port or 1883},
            "results": {"file": str(work / "results.jsonl"), "file_max_mb": 8, "file_keep": 1} if args.results else {},
            "log_level": "WARNING",
        })
        tune_interpreter()  # as run_agent does in the daemon process
        agent = Agent(config)
        agent.start()  # the synthetic source starts with it
        assert agent.loop is not None
        run_start = time.monotonic()
        if agent.runner is not None:
            agent.runner.stop()
            agent.runner = None
        # Throughput: alternate bare and daemon windows, so both see the same load on the machine.
        bare_rates, daemon_rates = [], []
        for _ in range(args.rounds):
            bare_rates.append(baseline.rate(args.window_s))
            daemon_rates.append(daemon_rate(agent, args.window_s))
        baseline.model.close()
        bare, daemon = float(np.median(bare_rates)), float(np.median(daemon_rates))
        # Each daemon window against the bare window just before it: what the machine's neighbours do to both
        # cancels in the pair, where a ratio of the two medians mixes windows minutes apart.
        ratio = float(np.median([d / b for b, d in zip(bare_rates, daemon_rates, strict=True)]))
        # Memory: keep the daemon busy for the rest of --duration.
        agent._start_source(agent.config)
        early_at = min(60.0, args.duration / 5)
        early_rss: float | None = None
        while (elapsed := time.monotonic() - run_start) < args.duration:
            time.sleep(min(0.5, max(0.01, args.duration - elapsed)))
            if early_rss is None and time.monotonic() - run_start >= early_at:
                early_rss = rss_mb()
        final_rss = rss_mb()
        dropped = agent.mailbox.dropped
        errors = agent.loop.errors
        processed = agent.loop.processed
        agent.stop()
        agent.close()
    early_rss = early_rss or final_rss
    bare_ms = 1000.0 / bare
    procs = _daemon_procs.measure(path, size, args.threads, runs=args.procs_runs) if args.procs_runs > 0 else None
    report = {
        "model_latency_ms": round(bare_ms, 3), "threads": args.threads,
        "bare_inferences_per_s": round(bare, 1), "daemon_inferences_per_s": round(daemon, 1),
        "rounds": [[round(b, 1), round(d, 1)] for b, d in zip(bare_rates, daemon_rates, strict=True)],
        "inferred_total": processed,
        "telemetry_over_mqtt": mqtt_port is not None, "throughput_ratio": round(ratio, 4),
        "throughput_ratio_of_medians": round(daemon / bare, 4),
        "duration_s": args.duration, "rss_early_mb": round(early_rss, 1), "rss_early_at_s": early_at,
        "rss_final_mb": round(final_rss, 1), "rss_ratio": round(final_rss / early_rss, 4),
        "frames_dropped_newest_wins": dropped, "inference_errors": errors, "results_file": args.results,
        "processes": procs,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model: {bare_ms:.3f} ms per inference (onnxruntime, {args.threads} thread(s))")
        print(f"bare runtime      : {bare:9.1f} inferences/s")
        telemetry = "" if mqtt_port else " (no Mosquitto: telemetry off)"
        print(f"daemon end-to-end : {daemon:9.1f} inferences/s{telemetry}  ratio {ratio:.3f} "
              f"(median of the rounds' ratios; target >= 0.97; of the medians {daemon / bare:.3f})")
        print("rounds (bare, daemon): " + ", ".join(f"({b:.0f}, {d:.0f})" for b, d in zip(bare_rates, daemon_rates,
                                                                                           strict=True)))
        print(f"RSS at {early_at:.0f}s: {early_rss:.1f} MB; at {args.duration:.0f}s: {final_rss:.1f} MB; "
              f"ratio {final_rss / early_rss:.3f} (target <= 1.05)")
        print(f"inferred in total: {processed}; frames replaced before inference (newest wins): {dropped}; "
              f"inference errors: {errors}")
        if procs is not None:
            broker = "MQTT to a local Mosquitto" if procs["mqtt_broker"] else "MQTT off (no Mosquitto)"
            print(f"processes (median of {procs['runs']}; daemon: API on, {broker}, an update server URL):")
            print(f"  RSS   bare {procs['bare_rss_mb']:.1f} MB; daemon source none {procs['daemon_rss_mb']:.1f} MB "
                  f"ratio {procs['rss_ratio_none']:.3f} (target <= 1.25); video {procs['daemon_video_rss_mb']:.1f} MB "
                  f"ratio {procs['rss_ratio_video']:.3f} (target <= 1.35); bare runtime decoding the same video "
                  f"{procs['bare_video_rss_mb']:.1f} MB, daemon/that {procs['rss_ratio_video_to_bare_video']:.3f}")
            print(f"  start bare import+load {procs['bare_startup_s']:.3f} s; daemon to READY "
                  f"{procs['daemon_startup_s']:.3f} s ratio {procs['startup_ratio']:.3f} (target <= 1.5); CPU "
                  f"bare {procs['bare_startup_cpu_s']:.2f} s, daemon {procs['daemon_startup_cpu_s']:.2f} s, ratio "
                  f"{procs['startup_cpu_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

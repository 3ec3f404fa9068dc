"""What model-quality monitoring costs on the device, against bare baselines measured in the same run.

    .venv/bin/python benchmarks/quality_cost.py [--seconds 5] [--fraction 0.1] [--budget 20] [--json]

1. Drift: µs per ``DriftMonitor.observe`` call (input statistics + output bins) on 640x480 and
   1920x1080 BGR frames, every frame and every 10th frame; next to it, the serving model's own
   pre-processing + inference per frame, and ``report()`` once.
2. Shadow: a closed serving loop (pre-process + ONNX Runtime inference, one thread, as fast as it
   goes) for --seconds alone, then with a ShadowRunner running a candidate of the same size at
   --fraction of the frames within --budget % CPU. Cost = throughput lost, % of the bare loop;
   also the candidate's measured CPU share and how many inputs it shadowed.

The models are small convolutional classifiers (1x3x224x224, three stride-2 3x3 convolutions of 32/64/128
channels, ~130 M multiply-adds, -> 10 classes; a few ms per inference, like a small mobile model),
written with onnx.helper.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.quality import DriftMonitor, ShadowRunner, build_reference_profile
from edgefleet.agent.wire import ShadowSpec

SIZE = 224
Infer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def conv_classifier(path: Path, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    inits = [weight("w1", 32, 3, 3, 3), weight("b1", 32), weight("w2", 64, 32, 3, 3), weight("b2", 64),
             weight("w3", 128, 64, 3, 3), weight("b3", 128), weight("wf", 128, 10), weight("bf", 10)]
    graph = helper.make_graph(nodes, "conv_classifier",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def session(path: Path) -> Infer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: {"scores": sess.run(["scores"], dict(feeds))[0]}


def preprocess(frame: np.ndarray) -> dict[str, np.ndarray]:
    rgb = cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE)), cv2.COLOR_BGR2RGB)
    return {"image": np.ascontiguousarray((rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])}


def frames(seed: int, count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.uniform(30, 220, (12, 16, 3)).astype(np.float32)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8))
    return out


def per_call_us(fn: Callable[[int], None], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def bench_drift(serving: Infer, calls: int) -> dict[str, Any]:
    reference = frames(1, 200, 480, 640)
    profile = build_reference_profile(reference, [serving(preprocess(f)) for f in reference], "classification")
    result: dict[str, Any] = {"profile_stats": len(profile.stats), "profile_json_bytes": len(profile.to_json())}
    for label, (h, w) in {"640x480": (480, 640), "1920x1080": (1080, 1920)}.items():
        live = frames(2, 32, h, w)
        outputs = [serving(preprocess(f)) for f in live]
        def serve(i: int, live: list[np.ndarray] = live) -> None:
            serving(preprocess(live[i % 32]))

        def observe_with(monitor: DriftMonitor, live: list[np.ndarray] = live,
                         outputs: list[dict[str, np.ndarray]] = outputs) -> Callable[[int], None]:
            return lambda i: monitor.observe(live[i % 32], outputs[i % 32])

        serve_us = per_call_us(serve, max(30, calls // 20))
        us1 = per_call_us(observe_with(DriftMonitor(profile)), calls)
        us10 = per_call_us(observe_with(DriftMonitor(profile, every=10)), calls)
        result[label] = {"observe_us": round(us1, 1), "observe_every10_us": round(us10, 1),
                         "serve_us": round(serve_us, 1), "observe_pct_of_serve": round(100 * us1 / serve_us, 2)}
    monitor = DriftMonitor(profile)
    for f in reference[:100]:
        monitor.observe(f, serving(preprocess(f)))

    def report(_i: int) -> None:
        monitor.report()

    result["report_us"] = round(per_call_us(report, 200), 1)
    return result


def serve_loop(serving: Infer, live: list[np.ndarray], seconds: float,
               runner: ShadowRunner | None) -> tuple[float, float]:
    """(frames/s, process CPU s) of a closed pre-process + inference loop."""
    done = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        feeds = preprocess(live[done % len(live)])
        outputs = serving(feeds)
        if runner is not None:
            runner.offer(feeds, outputs)
        done += 1
    wall = time.perf_counter() - start
    return done / wall, time.process_time() - cpu0


def bench_shadow(serving: Infer, candidate: Infer, seconds: float, fraction: float,
                 budget: float) -> dict[str, Any]:
    """Alternate 1 s of the bare loop with 1 s of the loop with shadow, so that the machine's
    changing load hits both alike; figures are over all rounds."""
    live = frames(3, 32, 480, 640)
    serve_loop(serving, live, 0.5, None)  # warm-up
    rounds = max(1, round(seconds))
    runner = ShadowRunner(candidate, ShadowSpec(sample_fraction=fraction, cpu_budget_pct=budget),
                          "classification", burst_s=0.05)
    bare_fps: list[float] = []
    shadow_fps: list[float] = []
    bare_cpu = shadow_cpu = 0.0
    try:
        for _ in range(rounds):
            fps, cpu = serve_loop(serving, live, 1.0, None)
            bare_fps.append(fps)
            bare_cpu += cpu
            fps, cpu = serve_loop(serving, live, 1.0, runner)
            shadow_fps.append(fps)
            shadow_cpu += cpu
        runner.wait_idle(5.0)
        report = runner.report()
    finally:
        runner.stop()
    bare, shadow = float(np.mean(bare_fps)), float(np.mean(shadow_fps))
    return {"sample_fraction": fraction, "cpu_budget_pct": budget, "rounds": rounds, "bare_fps": round(bare, 1),
            "shadow_fps": round(shadow, 1), "throughput_cost_pct": round(100 * (1 - shadow / bare), 2),
            "process_cpu_pct": {"bare": round(100 * bare_cpu / rounds, 1),
                                "with_shadow": round(100 * shadow_cpu / rounds, 1)},
            "candidate_cpu_pct_of_shadow_time": round(100 * report["busy_s"] / rounds, 2),
            "shadowed": report["samples"], "offered": report["offered"],
            "skipped_budget": report["skipped_budget"], "skipped_busy": report["skipped_busy"],
            "candidate_latency_ms": report["latency_ms"], "agreement": report["agreement"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serving = session(conv_classifier(Path(tmp) / "serving.onnx", 0))
        candidate = session(conv_classifier(Path(tmp) / "candidate.onnx", 1))
        drift = bench_drift(serving, args.calls)
        shadow = [bench_shadow(serving, candidate, args.seconds, args.fraction, args.budget),
                  bench_shadow(serving, candidate, args.seconds, 1.0, args.budget),
                  bench_shadow(serving, candidate, args.seconds, 1.0, 100.0)]
    result = {"drift": drift, "shadow": shadow}
    if args.json:
        print(json.dumps(result))
        return 0
    print("drift monitoring (DriftMonitor.observe, per frame)")
    for label in ("640x480", "1920x1080"):
        row = drift[label]
        print(f"  {label:>9}: {row['observe_us']:7.1f} µs every frame, {row['observe_every10_us']:6.1f} µs "
              f"amortised at every=10; serving (pre-process + inference) {row['serve_us']:.0f} µs "
              f"-> {row['observe_pct_of_serve']:.2f} % of it")
    print(f"  report(): {drift['report_us']} µs; profile: {drift['profile_stats']} statistics, "
          f"{drift['profile_json_bytes']} bytes of JSON")
    print("shadow evaluation (closed serving loop, one ONNX Runtime thread each)")
    for row in shadow:
        print(f"  fraction {row['sample_fraction']:.2f}, budget {row['cpu_budget_pct']:.0f} %: "
              f"{row['shadow_fps']:.0f} fps vs {row['bare_fps']:.0f} bare -> cost {row['throughput_cost_pct']:.1f} % "
              f"of serving throughput; candidate busy {row['candidate_cpu_pct_of_shadow_time']:.1f} % of the time"
              f", shadowed {row['shadowed']} "
              f"of {row['offered']} (budget skips {row['skipped_budget']}, busy skips {row['skipped_busy']}), "
              f"candidate p50 {row['candidate_latency_ms']['p50']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

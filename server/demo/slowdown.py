"""``--v2 slower``: a v2 that takes ``factor`` times v1's inference time here, timed, not assumed.

The demo's model is so small that a fixed cost per inference (waking up, cold caches, the
runtime's own call) is as large as its arithmetic: the model computed twice is about x1.4-x1.8 as
slow, not x2. So the copies are counted by timing: v1 and the model computed 2, 3, ... times are
timed alternately, as the agents run them (ONNX Runtime, one thread, an idle gap before each
inference, as between video frames), and the first whose median latency is ``factor`` times v1's
or more is the slower v2. The scores stay the same (``make_classifier(compute=...)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.server.demo.models import INPUT_SIZE, make_classifier

ROUNDS = 60  # inferences of each model per candidate
GAP_S = 0.005  # idle before each inference, as between frames
MAX_COMPUTE = 8


@dataclass(frozen=True)
class Slowdown:
    path: Path
    compute: int  # how many times the model is computed
    ratio: float  # its median latency over v1's, timed just now
    v1_median_ms: float
    median_ms: float

    def text(self) -> str:
        return (f"the model computed {self.compute} times: same scores, x{self.ratio:.2f} v1's median latency "
                f"timed here ({self.median_ms:.3f} vs {self.v1_median_ms:.3f} ms)")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _timed(session: Any, feeds: dict[str, np.ndarray]) -> float:
    time.sleep(GAP_S)
    start = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - start


def slower_model(path: Path, version: int, factor: float = 2.0, max_compute: int = MAX_COMPUTE) -> Slowdown:
    """Write the slower v2 to ``path``: the fewest copies whose median latency is ``factor`` x v1's
    (``max_compute`` copies when none is)."""
    feeds = {"image": np.random.default_rng(0).random((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)}
    base = _session(make_classifier(path.with_name(path.stem + "-timing-v1.onnx"), 1))
    for _ in range(5):
        _timed(base, feeds)
    best: Slowdown | None = None
    for compute in range(2, max_compute + 1):
        candidate_path = make_classifier(path, version, compute=compute)
        candidate = _session(candidate_path)
        for _ in range(5):
            _timed(candidate, feeds)
        v1_s, slow_s = [], []
        for _ in range(ROUNDS):
            v1_s.append(_timed(base, feeds))
            slow_s.append(_timed(candidate, feeds))
        v1_ms, slow_ms = float(np.median(v1_s)) * 1e3, float(np.median(slow_s)) * 1e3
        best = Slowdown(candidate_path, compute, slow_ms / v1_ms, v1_ms, slow_ms)
        if best.ratio >= factor:
            break
    path.with_name(path.stem + "-timing-v1.onnx").unlink(missing_ok=True)
    assert best is not None
    return best


__all__ = ["Slowdown", "slower_model"]

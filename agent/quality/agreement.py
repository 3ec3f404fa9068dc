"""How closely two models' outputs on the same input agree, and a running tally of it.

- classification: 1.0 when the top-1 class matches, else 0.0 (mean over the batch rows);
- detection (outputs with a declared ``BoxLayout``): greedy IoU matching at ``iou`` (class must
  match when classes are given), agreement = F1 of the candidate against the serving model;
- anything else: cosine similarity of all outputs (by name, flattened), clipped to [0, 1].
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.quality.stats import classifier_row


@dataclass(frozen=True)
class BoxLayout:
    """Which outputs hold detections: ``boxes`` [N,4] xyxy (a leading batch axis of 1 is dropped),
    ``scores`` [N], optional ``classes`` [N]; detections below ``score_threshold`` are ignored."""

    boxes: str = "boxes"
    scores: str = "scores"
    classes: str | None = "classes"
    score_threshold: float = 0.25


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a [N,4] and b [M,4] -> [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(a: np.ndarray, b: np.ndarray, *, a_classes: np.ndarray | None = None,
                b_classes: np.ndarray | None = None, iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, highest IoU first; pairs (i, j, iou) with IoU >= ``iou``."""
    overlaps = iou_matrix(a, b)
    if a_classes is not None and b_classes is not None and overlaps.size:
        same = np.asarray(a_classes).reshape(-1)[:, None] == np.asarray(b_classes).reshape(-1)[None, :]
        overlaps = np.where(same, overlaps, 0.0)
    pairs: list[tuple[int, int, float]] = []
    if not overlaps.size:
        return pairs
    order = np.argsort(-overlaps, axis=None, kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    for flat in order:
        i, j = divmod(int(flat), overlaps.shape[1])
        value = float(overlaps[i, j])
        if value < iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j, value))
    return pairs


def _detections(outputs: Mapping[str, np.ndarray], layout: BoxLayout) -> tuple[np.ndarray, np.ndarray | None]:
    if layout.boxes not in outputs:
        raise ValueError(f"detection outputs have no {layout.boxes!r} (have {sorted(outputs)})")
    boxes = np.asarray(outputs[layout.boxes]).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    if layout.scores in outputs:
        scores = np.asarray(outputs[layout.scores]).reshape(-1)
        if scores.size != len(boxes):
            raise ValueError(f"{scores.size} scores for {len(boxes)} boxes")
        keep = scores >= layout.score_threshold
    classes = None
    if layout.classes is not None and layout.classes in outputs:
        classes = np.asarray(outputs[layout.classes]).reshape(-1)[keep]
    return boxes[keep], classes


def detection_agreement(serving: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                        layout: BoxLayout | None = None, *, iou: float = 0.5) -> dict[str, float]:
    """``{"matched", "serving", "candidate", "precision", "recall", "f1"}``; two empty sets agree (f1 = 1)."""
    layout = layout or BoxLayout()
    ref_boxes, ref_classes = _detections(serving, layout)
    cand_boxes, cand_classes = _detections(candidate, layout)
    matched = len(match_boxes(ref_boxes, cand_boxes, a_classes=ref_classes, b_classes=cand_classes, iou=iou))
    n_ref, n_cand = len(ref_boxes), len(cand_boxes)
    precision = matched / n_cand if n_cand else (1.0 if not n_ref else 0.0)
    recall = matched / n_ref if n_ref else (1.0 if not n_cand else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"matched": float(matched), "serving": float(n_ref), "candidate": float(n_cand),
            "precision": precision, "recall": recall, "f1": f1}


def top1_agreement(serving: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                   output: str | None = None) -> float:
    """Fraction of batch rows whose argmax matches (the named output, else the first with > 1 value)."""
    a = _scores(serving, output)
    b = _scores(candidate, output)
    if a.shape != b.shape:
        raise ValueError(f"class scores differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def _scores(outputs: Mapping[str, np.ndarray], output: str | None) -> np.ndarray:
    row = classifier_row(outputs, output)
    if row is None:
        raise ValueError("no class scores in the outputs (an output with more than one value)")
    name = output or next(n for n, v in outputs.items() if np.asarray(v).size > 1)
    array = np.asarray(outputs[name])
    return array.reshape(-1, array.shape[-1])


def cosine_agreement(serving: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
    """Cosine similarity of the outputs both have (by name, flattened, concatenated), clipped to [0, 1]."""
    names = sorted(set(serving) & set(candidate))
    if not names:
        raise ValueError(f"no output in common: {sorted(serving)} vs {sorted(candidate)}")
    a = np.concatenate([np.asarray(serving[n], dtype=np.float64).reshape(-1) for n in names])
    b = np.concatenate([np.asarray(candidate[n], dtype=np.float64).reshape(-1) for n in names])
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in size: {a.size} vs {b.size} values")
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(min(1.0, max(0.0, float(a @ b) / norm)))


def agreement(serving: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], task: str, *,
              layout: BoxLayout | None = None, iou: float = 0.5, output: str | None = None) -> float:
    """One number in [0, 1] for one input: see the module docstring for the measure per task."""
    if task == "classification":
        return top1_agreement(serving, candidate, output)
    if task == "detection" and layout is not None:
        return detection_agreement(serving, candidate, layout, iou=iou)["f1"]
    return cosine_agreement(serving, candidate)


# Latency buckets: geometric, 5 % apart, from 0.01 ms to ~ 100 s; quantiles are read as the
# bucket's upper edge, so they are within 5 % of the true value.
_LATENCY_EDGES_MS = np.geomspace(0.01, 1e5, int(math.log(1e7) / math.log(1.05)) + 1)


class LatencyBuckets:
    """Fixed-bucket latency histogram: O(1) memory, p50/p95/p99/max."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_LATENCY_EDGES_MS) + 1, dtype=np.int64)
        self.n = 0
        self.max_ms = 0.0

    def add(self, latency_ms: float) -> None:
        self.counts[int(np.searchsorted(_LATENCY_EDGES_MS, latency_ms, side="left"))] += 1
        self.n += 1
        self.max_ms = max(self.max_ms, latency_ms)

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * self.n), side="left"))
        edge = float(_LATENCY_EDGES_MS[min(index, len(_LATENCY_EDGES_MS) - 1)])
        return round(min(edge, self.max_ms), 3)

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.quantile(0.5), "p95": self.quantile(0.95), "p99": self.quantile(0.99),
                "max": round(self.max_ms, 3) if self.n else None}


class AgreementTracker:
    """Running count, mean agreement, share of inputs that agree (>= ``agree_at``), candidate latency."""

    def __init__(self, agree_at: float = 0.5) -> None:
        self.agree_at = agree_at
        self._lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self._sum = 0.0
        self._agreed = 0
        self._min: float | None = None
        self.latency = LatencyBuckets()

    def add(self, value: float, latency_ms: float) -> None:
        with self._lock:
            self.count += 1
            self._sum += value
            self._agreed += value >= self.agree_at
            self._min = value if self._min is None else min(self._min, value)
            self.latency.add(latency_ms)

    def add_error(self) -> None:
        with self._lock:
            self.errors += 1

    @property
    def agreement(self) -> float | None:
        return self._sum / self.count if self.count else None

    def report(self) -> dict[str, Any]:
        with self._lock:
            mean = self._sum / self.count if self.count else None
            return {"samples": self.count, "errors": self.errors,
                    "agreement": round(mean, 6) if mean is not None else None,
                    "agreed_ratio": round(self._agreed / self.count, 6) if self.count else None,
                    "agreement_min": round(self._min, 6) if self._min is not None else None,
                    "latency_ms": self.latency.summary()}

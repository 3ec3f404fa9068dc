"""The trial after a swap: error rate and latency of the new model against a TrialPolicy.

``LatencyWindow`` keeps the serving model's recent latencies (the baseline measured before a
swap); ``TrialWatcher`` is a ModelHost observer that counts only inferences the candidate served
and decides: breach (roll back at once), pass (window over with enough inferences), or wait.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.wire import ModelMeta, TrialPolicy

# A latency ratio breach also needs p95 to be this much above the baseline: on sub-millisecond
# models the ratio of two p95s is mostly scheduler jitter.
RATIO_FLOOR_MS = 1.0


def p95_ms(latencies_s: list[float] | deque[float]) -> float | None:
    if not latencies_s:
        return None
    return float(np.percentile(np.asarray(latencies_s), 95) * 1000.0)


class LatencyWindow:
    """The last ``size`` latencies of successful inferences served by one model (by version and sha256)."""

    def __init__(self, size: int = 256) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, str] | None = None
        self._values: deque[float] = deque(maxlen=size)

    def __call__(self, meta: ModelMeta, latency_s: float, ok: bool) -> None:
        key = (meta.version, meta.sha256)
        with self._lock:
            if key != self._key:
                self._key = key
                self._values.clear()
            if ok:
                self._values.append(latency_s)

    def snapshot(self, meta: ModelMeta | None) -> list[float]:
        with self._lock:
            if meta is None or self._key != (meta.version, meta.sha256):
                return []
            return list(self._values)


@dataclass
class Verdict:
    decided: bool
    passed: bool
    reason: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


class TrialWatcher:
    def __init__(self, policy: TrialPolicy, candidate: ModelMeta, baseline_p95_ms: float | None,
                 *, max_wait_factor: float = 10.0) -> None:
        self.policy = policy
        self.candidate = candidate
        self.baseline_p95_ms = baseline_p95_ms
        self.started = time.monotonic()
        self.deadline = self.started + max(policy.window_s, 0.0) * max_wait_factor
        self._lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self._latencies: list[float] = []

    def __call__(self, meta: ModelMeta, latency_s: float, ok: bool) -> None:
        if (meta.version, meta.sha256) != (self.candidate.version, self.candidate.sha256):
            return
        with self._lock:
            self.count += 1
            if ok:
                self._latencies.append(latency_s)
            else:
                self.errors += 1

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            p95 = p95_ms(self._latencies)
            count, errors = self.count, self.errors
        ratio = p95 / self.baseline_p95_ms if p95 is not None and self.baseline_p95_ms else None
        return {"inferences": count, "errors": errors, "error_rate": errors / count if count else 0.0,
                "p95_ms": p95, "baseline_p95_ms": self.baseline_p95_ms, "latency_ratio": ratio,
                "elapsed_s": round(time.monotonic() - self.started, 3)}

    def evaluate(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        m = self.metrics()
        policy = self.policy
        enough = m["inferences"] >= policy.min_inferences
        # with enough errors that the rate cannot come back under the bound: breach at once
        hopeless = m["errors"] > policy.max_error_rate * policy.min_inferences
        if (enough or hopeless) and m["error_rate"] > policy.max_error_rate:
            return Verdict(True, False, f"error rate {m['error_rate']:.1%} over {m['inferences']} inferences "
                                        f"exceeds {policy.max_error_rate:.1%}", m)
        if enough and m["p95_ms"] is not None:
            if policy.max_p95_latency_ms is not None and m["p95_ms"] > policy.max_p95_latency_ms:
                return Verdict(True, False, f"p95 latency {m['p95_ms']:.2f} ms exceeds "
                                            f"{policy.max_p95_latency_ms:.2f} ms", m)
            if policy.max_latency_ratio is not None and m["latency_ratio"] is not None \
                    and m["latency_ratio"] > policy.max_latency_ratio \
                    and m["p95_ms"] - (self.baseline_p95_ms or 0.0) > RATIO_FLOOR_MS:
                return Verdict(True, False, f"p95 latency {m['p95_ms']:.2f} ms is {m['latency_ratio']:.1f}x the "
                                            f"previous model's {self.baseline_p95_ms:.2f} ms "
                                            f"(limit {policy.max_latency_ratio:.1f}x)", m)
        window_over = now - self.started >= policy.window_s
        if window_over and enough:
            return Verdict(True, True, None, m)
        if now >= self.deadline:
            # too little traffic to judge within max_wait_factor windows: nothing seen was bad
            m["insufficient_traffic"] = True
            return Verdict(True, True, None, m)
        return Verdict(False, False, None, m)

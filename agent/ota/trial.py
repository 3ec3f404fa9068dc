"""The trial after a swap: error rate and latency of the new model against a TrialPolicy.

``LatencyWindow`` keeps the serving model's recent latencies (the baseline measured before a
swap); ``TrialWatcher`` is a ModelHost observer that counts only inferences the candidate served
and decides: breach (roll back at once), pass (window over with enough inferences), or wait.

Latency is judged with its uncertainty: the candidate's first inferences (``warmup_inferences``,
and all within ``warmup_s`` of the swap) are not counted, at least ``min_inferences`` must be,
and a latency-ratio breach needs the lower bound of the bootstrap CI of p95(candidate) /
p95(baseline) above ``max_latency_ratio``. When the previous model is still loaded, that breach
is confirmed by timing the previous model again, beside the serving candidate, on its live inputs
(``agent.ota.paired``): a load change between the baseline window and the trial is then not read
as a slower model. That second timing is judged by its ratio of medians (its p95 is the burst's
preempted inferences).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.agent.ota.latency_ratio import RatioEstimate, ratio_ci
from edgefleet.agent.ota.paired import Paired
from edgefleet.agent.wire import ModelMeta, TrialPolicy

# A latency ratio breach also needs p95 or the median to be this much above the baseline: on
# sub-millisecond models the ratio of two p95s is mostly scheduler jitter.
RATIO_FLOOR_MS = 1.0
MIN_BASELINE = 20  # baseline latencies needed to judge a ratio at all
PAIRED_MAX_ROUNDS = 3  # timings of the previous model beside the candidate, at most, in one trial


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


PairedProbe = Callable[[], Paired | None]


class TrialWatcher:
    """``baseline``: the previous model's latencies (s) before the swap; ``paired``: times the previous
    model again now, beside the candidate (None when it is gone): called on a suspected breach or at the
    window's end, once, or up to ``PAIRED_MAX_ROUNDS`` times while its interval holds the limit; when it
    ran, a ratio breach needs it to agree."""

    def __init__(self, policy: TrialPolicy, candidate: ModelMeta, baseline_p95_ms: float | None,
                 *, baseline: list[float] | None = None, paired: PairedProbe | None = None,
                 max_wait_factor: float = 10.0, seed: int | None = None) -> None:
        self.policy = policy
        self.candidate = candidate
        self.baseline = list(baseline or [])
        self.baseline_p95_ms = p95_ms(self.baseline) if self.baseline else baseline_p95_ms
        self.paired = paired
        self.seed = seed if seed is not None else zlib.crc32(candidate.sha256.encode())
        self.started = time.monotonic()
        self.deadline = self.started + max(policy.window_s, 0.0) * max_wait_factor
        self._lock = threading.Lock()
        self.count = 0  # every inference the candidate served, warm-up included
        self.errors = 0
        self.warmup = 0
        self._latencies: list[float] = []  # after warm-up
        self._paired: RatioEstimate | None = None
        self._paired_rounds = 0
        self._paired_samples: Paired = ([], [])
        self._live: RatioEstimate | None = None

    def __call__(self, meta: ModelMeta, latency_s: float, ok: bool) -> None:
        if (meta.version, meta.sha256) != (self.candidate.version, self.candidate.sha256):
            return
        now = time.monotonic()
        with self._lock:
            self.count += 1
            if not ok:
                self.errors += 1
            elif self.count <= self.policy.warmup_inferences or now - self.started < self.policy.warmup_s:
                self.warmup += 1
            else:
                self._latencies.append(latency_s)

    def live_since(self) -> Callable[[], list[float]]:
        """Marks now; the returned callable gives the candidate's counted latencies since the mark."""
        with self._lock:
            mark = len(self._latencies)

        def since() -> list[float]:
            with self._lock:
                return self._latencies[mark:]
        return since

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            p95 = p95_ms(self._latencies)
            count, errors, warmup, counted = self.count, self.errors, self.warmup, len(self._latencies)
        ratio = p95 / self.baseline_p95_ms if p95 is not None and self.baseline_p95_ms else None
        out: dict[str, Any] = {
            "inferences": count, "errors": errors, "error_rate": errors / count if count else 0.0,
            "warmup_excluded": warmup, "counted": counted, "p95_ms": p95, "baseline_p95_ms": self.baseline_p95_ms,
            "baseline_n": len(self.baseline), "latency_ratio": ratio,
            "elapsed_s": round(time.monotonic() - self.started, 3)}
        if self._live is not None:
            out["latency_ci"] = self._live.as_dict()
        if self._paired is not None:
            out["paired"] = self._paired.as_dict()
        return out

    def evaluate(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        m = self.metrics()
        policy = self.policy
        # error rate over every inference: a failing model is failing from its first answer
        enough_any = m["inferences"] >= policy.min_inferences
        hopeless = m["errors"] > policy.max_error_rate * policy.min_inferences
        if (enough_any or hopeless) and m["error_rate"] > policy.max_error_rate:
            return Verdict(True, False, f"error rate {m['error_rate']:.1%} over {m['inferences']} inferences "
                                        f"exceeds {policy.max_error_rate:.1%}", m)
        enough = m["counted"] >= policy.min_inferences and m["p95_ms"] is not None
        limit_ms = policy.max_p95_latency_ms
        if enough and limit_ms is not None and m["p95_ms"] > limit_ms:
            return Verdict(True, False, f"p95 latency {m['p95_ms']:.2f} ms over {m['counted']} inferences "
                                        f"exceeds {limit_ms:.2f} ms", m)
        window_over = now - self.started >= policy.window_s
        if enough:
            reason = self._ratio_breach(m, final=window_over)
            if reason is not None:
                return Verdict(True, False, reason, self.metrics())
        if window_over and enough:
            return Verdict(True, True, None, self.metrics())
        if now >= self.deadline:
            # too little traffic to judge within max_wait_factor windows: nothing seen was bad
            m = self.metrics()
            m["insufficient_traffic"] = True
            return Verdict(True, True, None, m)
        return Verdict(False, False, None, m)

    def _live_estimate(self, m: dict[str, Any], limit: float) -> RatioEstimate | None:
        """The live ratios' intervals, computed only when the point ratios are over ``limit``."""
        if len(self.baseline) < MIN_BASELINE:
            return None
        with self._lock:
            latencies = list(self._latencies)
        median_s, base_median_s = float(np.median(latencies)), float(np.median(self.baseline))
        gap_ms = max(m["p95_ms"] - (self.baseline_p95_ms or 0.0), (median_s - base_median_s) * 1000.0)
        if gap_ms <= RATIO_FLOOR_MS:
            return None
        point_median = median_s / max(base_median_s, 1e-12)
        if max(m["latency_ratio"] or 0.0, point_median) <= limit:
            return None  # the intervals' lower bounds sit under the point ratios: no bootstrap needed
        if self._live is None or len(latencies) >= self._live.candidate_n * 1.1 + 5:
            self._live = ratio_ci(latencies, self.baseline, confidence=self.policy.confidence, seed=self.seed)
        return self._live

    def _time_beside(self, limit: float) -> None:
        """Time the previous model beside the candidate once; again (pooling the samples, at most
        ``PAIRED_MAX_ROUNDS`` in all) while the median ratio's interval holds the limit with the point over it:
        a model near the limit is decided by more samples, not by where one short interval happened to fall."""
        while self.paired is not None and self._paired_rounds < PAIRED_MAX_ROUNDS and (
                self._paired_rounds == 0 or self._paired is None
                or self._paired.median_straddles(limit, RATIO_FLOOR_MS)):
            self._paired_rounds += 1
            measured = self.paired()
            if measured is None:
                return
            self._paired_samples[0].extend(measured[0])
            self._paired_samples[1].extend(measured[1])
            if len(self._paired_samples[0]) >= MIN_BASELINE:
                self._paired = ratio_ci(*self._paired_samples, confidence=self.policy.confidence,
                                        seed=self.seed + self._paired_rounds)

    def _ratio_breach(self, m: dict[str, Any], final: bool) -> str | None:
        """A latency-ratio breach needs an interval above the limit: the live one (early), or at the window's
        end the previous model's second timing; whenever that second timing ran, it must agree."""
        limit = self.policy.max_latency_ratio
        if limit is None:
            return None
        live = self._live_estimate(m, limit)
        live_breach = live is not None and live.breaches(limit, RATIO_FLOOR_MS)
        if not (live_breach or final):
            return None
        self._time_beside(limit)
        paired = self._paired
        if paired is None:
            if live is None or not live_breach:
                return None
            return f"latency is above x{limit:.2f} the previous model's: {live.text()}"
        # The second timing is a burst of back-to-back inferences: on a loaded box its p95 is the few of them
        # that were preempted, and a longer inference is preempted more often, so its p95 ratio overstates a
        # slowdown many times over (x52 for a model x3.8 slower by its median, under stress-ng); its median
        # ratio is what it measures well.
        if not paired.median_breaches(limit, RATIO_FLOOR_MS):
            return None  # both models timed side by side now: the live gap was the load, not the model
        live_text = live.text() if live is not None else (
            f"p95 {m['p95_ms']:.2f} ms (n={m['counted']}) vs {self.baseline_p95_ms or 0.0:.2f} ms "
            f"(n={len(self.baseline)})")
        return (f"latency is above x{limit:.2f} the previous model's: {live_text}; "
                f"the previous model timed again beside it now: {paired.text()}")

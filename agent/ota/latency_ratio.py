"""The latency ratio of a candidate model to a baseline, with its uncertainty.

``ratio_ci`` is a seeded percentile bootstrap of ``p95(candidate) / p95(baseline)`` and of the
ratio of medians over two independent samples. The two ratios share the error budget
(Bonferroni): each interval is at ``1 - (1 - confidence) / 2``, so "either lower bound above the
limit" has a false-alarm rate of at most ``(1 - confidence) / 2``. Cost is bounded: at most
``MAX_SAMPLES`` values a side (the most recent ones) and ``RESAMPLES`` resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_SAMPLES = 512
RESAMPLES = 400


@dataclass(frozen=True)
class RatioEstimate:
    """Point ratios of p95s and of medians, each with its interval (figures in ms)."""

    ratio: float
    low: float
    high: float
    median_ratio: float
    median_low: float
    median_high: float
    candidate_p95_ms: float
    baseline_p95_ms: float
    candidate_n: int
    baseline_n: int
    confidence: float

    candidate_median_ms: float = 0.0
    baseline_median_ms: float = 0.0

    def breaches(self, limit: float, floor_ms: float) -> bool:
        """Either ratio's lower bound above ``limit``, and p95 or median more than ``floor_ms`` above the baseline's."""
        gap = max(self.candidate_p95_ms - self.baseline_p95_ms, self.candidate_median_ms - self.baseline_median_ms)
        return max(self.low, self.median_low) > limit and gap > floor_ms

    def median_breaches(self, limit: float, floor_ms: float) -> bool:
        """The ratio of medians' lower bound above ``limit``, and the median more than ``floor_ms`` above."""
        return self.median_low > limit and self.candidate_median_ms - self.baseline_median_ms > floor_ms

    def median_straddles(self, limit: float, floor_ms: float) -> bool:
        """The ratio of medians' interval holds ``limit`` and the median is over it by more than ``floor_ms``:
        more samples would decide it."""
        return self.median_low <= limit < self.median_high and self.median_ratio > limit \
            and self.candidate_median_ms - self.baseline_median_ms > floor_ms

    def text(self) -> str:
        return (f"p95 {self.candidate_p95_ms:.2f} ms (n={self.candidate_n}) vs {self.baseline_p95_ms:.2f} ms "
                f"(n={self.baseline_n}): x{self.ratio:.2f}, {self.confidence:.0%} CI x{self.low:.2f}-x{self.high:.2f}; "
                f"median x{self.median_ratio:.2f}, CI x{self.median_low:.2f}-x{self.median_high:.2f}")

    def as_dict(self) -> dict[str, float | int]:
        return {"ratio": round(self.ratio, 4), "ci_low": round(self.low, 4), "ci_high": round(self.high, 4),
                "median_ratio": round(self.median_ratio, 4), "median_ci_low": round(self.median_low, 4),
                "median_ci_high": round(self.median_high, 4),
                "candidate_p95_ms": round(self.candidate_p95_ms, 4), "baseline_p95_ms": round(self.baseline_p95_ms, 4),
                "candidate_n": self.candidate_n, "baseline_n": self.baseline_n, "confidence": self.confidence}


def _recent(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values[-MAX_SAMPLES:], dtype=np.float64) * 1000.0


def _interval(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 4.0 * 100.0  # two ratios, two tails each
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


def _estimate(cand: np.ndarray, base: np.ndarray, cand_q: np.ndarray, base_q: np.ndarray,
              confidence: float) -> RatioEstimate:
    """``*_q``: (RESAMPLES, 2) medians and p95s of the resamples."""
    ratios = cand_q / np.maximum(base_q, 1e-9)
    median_low, median_high = _interval(ratios[:, 0], confidence)
    low, high = _interval(ratios[:, 1], confidence)
    c50, c95 = (float(v) for v in np.percentile(cand, [50, 95]))
    b50, b95 = (float(v) for v in np.percentile(base, [50, 95]))
    return RatioEstimate(c95 / max(b95, 1e-9), low, high, c50 / max(b50, 1e-9), median_low, median_high,
                         c95, b95, int(cand.size), int(base.size), confidence, c50, b50)


def _quantiles(resampled: np.ndarray) -> np.ndarray:
    return np.asarray(np.percentile(resampled, [50, 95], axis=1)).T


def ratio_ci(candidate_s: Sequence[float], baseline_s: Sequence[float], *, confidence: float = 0.95,
             seed: int = 0) -> RatioEstimate:
    """Bootstrap intervals of the candidate/baseline ratios of p95 and median; latencies in seconds."""
    cand, base = _recent(candidate_s), _recent(baseline_s)
    if cand.size == 0 or base.size == 0:
        raise ValueError("both samples need at least one latency")
    rng = np.random.default_rng(seed)
    cand_q = _quantiles(cand[rng.integers(0, cand.size, (RESAMPLES, cand.size))])
    base_q = _quantiles(base[rng.integers(0, base.size, (RESAMPLES, base.size))])
    return _estimate(cand, base, cand_q, base_q, confidence)

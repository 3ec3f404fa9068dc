"""A fixed-size latency histogram with log-spaced buckets.

``record`` is O(1) and allocates nothing: one ``log10``, one index, three adds. Memory is a
fixed list of counters whatever the rate, so a busy device never grows a list of samples.
Percentiles are read from the buckets: the upper bound of the bucket that holds the rank,
clamped to the exact min and max seen, so the error is at most one bucket width
(``10 ** (1 / per_decade)``, 7.5 % with the default 32 buckets per decade).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    count: int
    errors: int
    min_s: float | None
    max_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None

    def latency_ms(self) -> dict[str, float | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {"p50": ms(self.p50_s), "p95": ms(self.p95_s), "p99": ms(self.p99_s), "max": ms(self.max_s)}


class LatencyHistogram:
    """Counts latencies from ``lo_s`` to ``hi_s`` in log-spaced buckets; thread-safe."""

    def __init__(self, lo_s: float = 1e-5, hi_s: float = 100.0, per_decade: int = 32) -> None:
        if not 0 < lo_s < hi_s or per_decade < 1:
            raise ValueError("need 0 < lo_s < hi_s and per_decade >= 1")
        self._log_lo = math.log10(lo_s)
        self._per_decade = per_decade
        n = math.ceil((math.log10(hi_s) - self._log_lo) * per_decade)
        # bucket 0: below lo_s; bucket n + 1: at or above hi_s
        self._last = n + 1
        self._bounds = [lo_s * 10 ** (i / per_decade) for i in range(n + 1)]  # upper bound of bucket i
        self._counts = [0] * (n + 2)
        self._lock = threading.Lock()
        self._count = 0
        self._errors = 0
        self._min = math.inf
        self._max = 0.0

    def record(self, latency_s: float, ok: bool = True) -> None:
        with self._lock:
            self._count += 1
            if not ok:
                self._errors += 1
                return
            if latency_s > 0.0:
                idx = int((math.log10(latency_s) - self._log_lo) * self._per_decade) + 1
                idx = 0 if idx < 0 else (self._last if idx > self._last else idx)
            else:
                idx = 0
            self._counts[idx] += 1
            if latency_s > self._max:
                self._max = latency_s
            if latency_s < self._min:
                self._min = latency_s

    def snapshot(self, reset: bool = True) -> Summary:
        """The summary since the last reset; with ``reset`` the counters start again."""
        with self._lock:
            counts = self._counts[:]
            count, errors, lo, hi = self._count, self._errors, self._min, self._max
            if reset:
                self._counts = [0] * len(counts)
                self._count = self._errors = 0
                self._min, self._max = math.inf, 0.0
        ok = count - errors
        if ok <= 0:
            return Summary(count, errors, None, None, None, None, None)
        return Summary(count, errors, lo, hi, *(self._quantile(counts, ok, q, lo, hi) for q in (0.5, 0.95, 0.99)))

    def _quantile(self, counts: list[int], total: int, q: float, lo: float, hi: float) -> float:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for idx, n in enumerate(counts):
            seen += n
            if seen >= rank:
                upper = self._bounds[idx] if idx < len(self._bounds) else hi
                return min(max(upper, lo), hi)
        return hi

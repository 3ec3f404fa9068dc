"""The per-interval latency histogram, on the wire contract's buckets (``agent/latency.py``, 2 % relative error).

``record`` is O(1) and allocates nothing: one ``log``, one index, a few adds under a lock. Memory is a fixed
list of ``latency.BUCKETS`` counters whatever the rate, so a busy device never grows a list of samples.
``snapshot(reset=True)`` swaps the counters for fresh ones under the same lock, so a latency recorded while a
message is being built counts in this interval or the next, never in none or both. The snapshot carries the
interval's counts (``Summary.hist``, the ``inference.latency_hist`` wire form) and p50/p95/p99 read from them:
the value of the bucket that holds the rank, clamped to the exact min and max seen.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from edgefleet.agent import latency

_BUCKETS = latency.BUCKETS
_LAST = latency.BUCKETS - 1
_MIN_MS = latency.MIN_MS
_SCALE = 1.0 / latency.LOG_GAMMA
_SHIFT = 1 - latency.I_LO


@dataclass(frozen=True)
class Summary:
    count: int
    errors: int
    min_s: float | None
    max_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    hist: dict[str, int | list[int]] = field(default_factory=lambda: {"offset": 0, "counts": []})  # wire form

    def latency_ms(self) -> dict[str, float | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {"p50": ms(self.p50_s), "p95": ms(self.p95_s), "p99": ms(self.p99_s), "max": ms(self.max_s)}


class LatencyHistogram:
    """Counts latencies (seconds) on the contract's buckets; thread-safe. Errors are counted, not timed."""

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
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
            ms = latency_s * 1000.0
            if ms > _MIN_MS:  # latency.bucket_of(ms), inlined
                idx = math.ceil(math.log(ms) * _SCALE) + _SHIFT
                if idx > _LAST:
                    idx = _LAST
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
            counts = self._counts
            count, errors, lo, hi = self._count, self._errors, self._min, self._max
            if reset:
                self._counts = [0] * _BUCKETS
                self._count = self._errors = 0
                self._min, self._max = math.inf, 0.0
            else:
                counts = counts[:]
        offset, run = latency.trimmed(counts)
        hist: dict[str, int | list[int]] = {"offset": offset, "counts": run}
        if count - errors <= 0:
            return Summary(count, errors, None, None, None, None, None, hist)
        sparse = latency.decode(offset, run)
        def at(q: float) -> float:
            value_ms = latency.quantile(sparse, q)
            return hi if value_ms is None else min(max(value_ms / 1000.0, lo), hi)

        return Summary(count, errors, lo, hi, at(0.5), at(0.95), at(0.99), hist)

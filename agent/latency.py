"""The latency buckets of the wire contract: fixed, log-spaced, relative error at most 2 % (DDSketch's mapping).

Standard library only: the agent, the server and outside tools decode histograms with this alone.

Buckets (``docs/telemetry.md`` "Latency histogram" says the same for tools in other languages):

- ``ALPHA = 0.02``, ``GAMMA = (1 + ALPHA) / (1 - ALPHA)``; latencies are in milliseconds.
- Bucket ``0`` (zero/underflow) holds every latency ``<= MIN_MS`` (1 µs), zero included; its value is ``0.0``.
- A latency ``v > MIN_MS`` has the logarithmic index ``i = ceil(log(v) / log(GAMMA))``, clamped to
  ``[I_LO, I_HI]`` (``I_LO = ceil(log_GAMMA(MIN_MS))``, ``I_HI = ceil(log_GAMMA(MAX_MS))``, MAX_MS = 10 min),
  and lies in bucket ``k = i - I_LO + 1``: bucket ``k >= 1`` covers ``(GAMMA**(i-1), GAMMA**i]`` ms. Latencies
  above MAX_MS land in the last bucket (``BUCKETS - 1``), whose error is then unbounded.
- The value a bucket stands for is ``2 * GAMMA**i / (GAMMA + 1)``: within ``ALPHA`` of every latency in it.

Wire form (``inference.latency_hist`` of a telemetry message): the counts since the previous message as one
dense run, ``{"offset": k0, "counts": [n_k0, n_k0+1, ...]}``: ``counts[j]`` latencies fell in bucket
``k0 + j``. A sender trims leading and trailing zeros (an empty interval sends ``{"offset": 0, "counts": []}``
or leaves the field out). Bounds a receiver enforces: ``0 <= offset``, ``offset + len(counts) <= BUCKETS``,
each count an integer in ``[0, 2**31 - 1]``, their sum at most ``inference.count`` of the same message.
Merging histograms is adding counts bucket by bucket, so a fleet's percentile is exact to the buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

ALPHA = 0.02
GAMMA = (1.0 + ALPHA) / (1.0 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
MIN_MS = 1e-3  # 1 µs: at or below, the zero/underflow bucket
MAX_MS = 600_000.0  # 10 min: above, the last bucket
I_LO = math.ceil(math.log(MIN_MS) / LOG_GAMMA)
I_HI = math.ceil(math.log(MAX_MS) / LOG_GAMMA)
BUCKETS = I_HI - I_LO + 2  # the zero bucket plus I_LO..I_HI
ZERO_BUCKET = 0
COUNT_MAX = 2**31 - 1

_INV_LOG_GAMMA = 1.0 / LOG_GAMMA
_LAST = BUCKETS - 1
_SHIFT = 1 - I_LO


def bucket_of(ms: float) -> int:
    """The bucket a latency of ``ms`` milliseconds counts in (NaN and negatives: the zero bucket)."""
    if not ms > MIN_MS:
        return ZERO_BUCKET
    k = math.ceil(math.log(ms) * _INV_LOG_GAMMA) + _SHIFT
    return k if k < _LAST else _LAST


def bucket_value(k: int) -> float:
    """The latency (ms) bucket ``k`` stands for: within ALPHA of everything in it (0.0 for the zero bucket)."""
    if not 0 <= k < BUCKETS:
        raise ValueError(f"bucket {k} is outside 0..{BUCKETS - 1}")
    if k == ZERO_BUCKET:
        return 0.0
    return 2.0 * GAMMA ** (k - _SHIFT) / (GAMMA + 1.0)


def bucket_bounds(k: int) -> tuple[float, float]:
    """(lower, upper] latency bounds (ms) of bucket ``k``; the zero bucket is (-inf, MIN_MS]."""
    if not 0 <= k < BUCKETS:
        raise ValueError(f"bucket {k} is outside 0..{BUCKETS - 1}")
    if k == ZERO_BUCKET:
        return -math.inf, MIN_MS
    i = k - _SHIFT
    lower = MIN_MS if k == 1 else GAMMA ** (i - 1)
    return lower, (math.inf if k == _LAST else GAMMA**i)


def trimmed(counts: Mapping[int, int] | list[int]) -> tuple[int, list[int]]:
    """(offset, run) of counts by bucket (a dense list of BUCKETS, or a sparse mapping), zeros trimmed."""
    if isinstance(counts, Mapping):
        used = [k for k, n in counts.items() if n]
        if not used:
            return 0, []
        lo, hi = min(used), max(used)
        return lo, [counts.get(k, 0) for k in range(lo, hi + 1)]
    first = next((k for k, n in enumerate(counts) if n), None)
    if first is None:
        return 0, []
    end = len(counts) - next(j for j, n in enumerate(reversed(counts)) if n)
    return first, list(counts[first:end])


def encode(counts: Mapping[int, int] | list[int]) -> dict[str, int | list[int]]:
    """The wire form ``{"offset", "counts"}`` of counts by bucket: one trimmed run."""
    offset, run = trimmed(counts)
    return {"offset": offset, "counts": run}


def decode(offset: int, counts: Iterable[int]) -> dict[int, int]:
    """Sparse counts by bucket of one wire run (already validated: see ``agent.wire.LatencyHist``)."""
    return {offset + j: n for j, n in enumerate(counts) if n}


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Bucket-wise sum: the histogram of all the latencies the inputs counted, exactly."""
    total: dict[int, int] = {}
    for hist in histograms:
        for k, n in hist.items():
            total[k] = total.get(k, 0) + n
    return total


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The value of the bucket that holds the nearest-rank ``q`` quantile (rank ``max(1, ceil(q * n))``);
    None for an empty histogram."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for k in sorted(counts):
        seen += counts[k]
        if seen >= rank:
            return bucket_value(k)
    return bucket_value(max(counts))


__all__ = ["ALPHA", "BUCKETS", "COUNT_MAX", "GAMMA", "I_HI", "I_LO", "LOG_GAMMA", "MAX_MS", "MIN_MS", "ZERO_BUCKET",
           "bucket_bounds", "bucket_of", "bucket_value", "decode", "encode", "merge", "quantile", "trimmed"]

"""The fleet's inference latency as a Prometheus histogram, fed from the histograms this replica ingests.

``edgefleet_fleet_inference_latency_seconds{model, version}``: cumulative counts since the replica started,
on the ``le`` boundaries of ``LE_SECONDS``. A contract bucket (2 % wide, ``agent/latency.py``) counts under
the smallest ``le`` at or above its value (``latency.bucket_value``), so a count sits at most 2 % on the wrong
side of a boundary; ``_sum`` adds bucket values. Every replica counts what it wrote (``sum by`` in PromQL
joins them); a message the broker delivers twice counts twice here, once in the database.

Model names come from devices: past ``MAX_SERIES`` (model, version) pairs, the others count under
``model="_other", version=""`` so a device cannot grow the scrape without bound.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric

from edgefleet.agent import latency as buckets

METRIC = "edgefleet_fleet_inference_latency_seconds"
LE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 256
OTHER = ("_other", "")
_VALUES_S = [buckets.bucket_value(k) / 1000.0 for k in range(buckets.BUCKETS)]
# the le slot of each contract bucket: len(LE_SECONDS) is +Inf
_SLOT = [bisect.bisect_left(LE_SECONDS, value) for value in _VALUES_S]


class FleetLatency:
    """Thread-safe: the ingest writer adds, a scrape reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], list[int]] = {}  # counts on the contract's buckets

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Latency rows (``model_name``, ``model_version``, ``i0``, ``counts``), under one lock."""
        with self._lock:
            for row in rows:
                version = row["model_version"]
                key = (row["model_name"] or "", "" if version is None else str(version))
                series = self._series.get(key)
                if series is None:
                    series = self._new_series(key)
                i0, counts = row["i0"], row["counts"]
                end = i0 + len(counts)
                series[i0:end] = map(operator.add, series[i0:end], counts)  # the loop in C; le slots at scrape time

    def _new_series(self, key: tuple[str, str]) -> list[int]:
        if len(self._series) >= MAX_SERIES:
            key = OTHER
            series = self._series.get(key)
            if series is not None:
                return series
        series = self._series[key] = [0] * buckets.BUCKETS
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(METRIC, "Inference latency reported by devices (their latency histograms), "
                                       "by model and version", labels=["model", "version"])
        with self._lock:
            snapshot = [(key, list(series)) for key, series in sorted(self._series.items())]
        les = (*(repr(b) for b in LE_SECONDS), "+Inf")
        for (model, version), series in snapshot:
            slots = [0] * len(les)
            total = 0.0
            for k, n in enumerate(series):
                if n:
                    slots[_SLOT[k]] += n
                    total += n * _VALUES_S[k]
            cumulative, running = [], 0
            for le, n in zip(les, slots, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric([model, version], cumulative, sum_value=total)
        yield family


__all__ = ["LE_SECONDS", "MAX_SERIES", "METRIC", "FleetLatency"]

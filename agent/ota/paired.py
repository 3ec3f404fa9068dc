"""The previous model timed again now, beside the candidate, on the inputs the candidate serves.

Run during a trial (the previous model is still loaded): the OTA thread times the previous model
on the latest live feeds while live traffic keeps reaching the candidate, so both figures come
from the same seconds, the same load and the same input shapes. A load change between the
baseline window and the trial then shows in both instead of in the ratio. With too little live
traffic in that time, the candidate is timed too, alternately with the previous model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from edgefleet.agent.ota.synthetic import synthetic_feeds
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

WARMUP_ROUNDS = 2
Paired = tuple[list[float], list[float]]  # (candidate latencies, previous model's latencies), seconds


class LatestFeeds:
    """A ModelHost tap that keeps a reference to the last feeds the candidate served (no copy)."""

    def __init__(self, candidate: ModelMeta) -> None:
        self._key = (candidate.version, candidate.sha256)
        self._lock = threading.Lock()
        self.feeds: Mapping[str, np.ndarray] | None = None

    def __call__(self, feeds: Mapping[str, np.ndarray], _outputs: dict[str, np.ndarray], meta: ModelMeta) -> None:
        if (meta.version, meta.sha256) == self._key:
            with self._lock:
                self.feeds = feeds


def _timed(model: Model, feeds: Mapping[str, np.ndarray]) -> float:
    start = time.perf_counter()
    model.infer(feeds)
    return time.perf_counter() - start


def measure_beside(candidate: Model, previous: Model, feeds: Mapping[str, np.ndarray] | None, *,
                   live_since: Callable[[], Callable[[], list[float]]], rounds: int, budget_s: float,
                   min_live: int, stop: Callable[[], bool] = lambda: False) -> Paired | None:
    """Time ``previous`` ``rounds`` times (within ``budget_s``) while live traffic reaches the candidate;
    ``live_since()`` marks now and returns what gives the candidate's live latencies since the mark.
    When fewer than ``min_live`` arrived, the candidate is timed alternately instead. None when a model fails."""
    inputs = feeds if feeds is not None else synthetic_feeds(previous.inputs)
    previous_s: list[float] = []
    try:
        for _ in range(WARMUP_ROUNDS):
            _timed(previous, inputs)
        since = live_since()
        deadline = time.monotonic() + budget_s
        while len(previous_s) < rounds and time.monotonic() < deadline and not stop():
            previous_s.append(_timed(previous, inputs))
            time.sleep(0)  # let a waiting live request through
        live = since()
        if len(live) >= min_live:
            return live, previous_s
        candidate_s: list[float] = []
        previous_s = []
        deadline = time.monotonic() + budget_s
        while len(candidate_s) < rounds and time.monotonic() < deadline and not stop():
            first, second = (candidate, previous) if len(candidate_s) % 2 else (previous, candidate)
            a, b = _timed(first, inputs), _timed(second, inputs)
            candidate_s.append(a if first is candidate else b)
            previous_s.append(b if first is candidate else a)
        return candidate_s, previous_s
    except Exception:
        return None

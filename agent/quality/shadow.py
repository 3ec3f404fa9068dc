"""Shadow evaluation: run a candidate model beside the serving one on a sample of live inputs.

The serving thread only calls ``offer(feeds, outputs)``, which decides in a few µs and never
waits: a pair is taken when the sampling accumulator says so (exactly ``sample_fraction`` of the
offers over time), the CPU budget has credit, and the one-slot queue is free. The candidate then
runs on a worker thread at the lowest OS priority. The budget is a token bucket in seconds of
candidate time: it fills at ``cpu_budget_pct`` % of wall time (capped at ``burst_s``) and each
candidate run spends its measured duration, so over any stretch the candidate is busy at most
``cpu_budget_pct`` % of the time plus one burst.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgefleet.agent.quality.agreement import AgreementTracker, BoxLayout, agreement
from edgefleet.agent.wire import ShadowSpec

log = logging.getLogger(__name__)
CandidateInfer = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]


def _lower_priority() -> None:
    """Nice the calling thread to 19 (Linux: per-thread); silently a no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class ShadowRunner:
    def __init__(self, candidate_infer: CandidateInfer, spec: ShadowSpec, task: str, *,
                 layout: BoxLayout | None = None, iou: float = 0.5, max_error_rate: float = 0.05,
                 burst_s: float = 0.1, copy_inputs: bool = True, name: str = "shadow") -> None:
        self.candidate_infer = candidate_infer
        self.spec = spec
        self.task = task
        self.layout = layout
        self.iou = iou
        self.max_error_rate = max_error_rate
        self.burst_s = burst_s
        self.copy_inputs = copy_inputs
        self.tracker = AgreementTracker()
        self.offered = 0
        self.sampled = 0
        self.skipped_budget = 0
        self.skipped_busy = 0
        self.last_error: str | None = None
        self._credit = 0.0  # sampling accumulator
        self._rate = spec.cpu_budget_pct / 100.0
        self._tokens = burst_s
        self._refilled = time.perf_counter()
        self._started = self._refilled
        self._busy_s = 0.0
        self._cond = threading.Condition()
        self._slot: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self._running = False
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # --- serving thread ------------------------------------------------------------------------

    def offer(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bool:
        """Hand one live (feeds, serving outputs) pair; True when it was taken for the candidate."""
        self.offered += 1
        self._credit += self.spec.sample_fraction
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        with self._cond:
            if self._stopped:
                return False
            now = time.perf_counter()
            self._tokens = min(self.burst_s, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens <= 0.0:
                self.skipped_budget += 1
                return False
            if self._slot is not None or self._running:
                self.skipped_busy += 1
                return False
            if self.copy_inputs:
                feeds = {k: np.array(v, copy=True) for k, v in feeds.items()}
                outputs = {k: np.array(v, copy=True) for k, v in outputs.items()}
            self._slot = (dict(feeds), dict(outputs))
            self.sampled += 1
            self._cond.notify()
        return True

    # --- worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while self._slot is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                assert self._slot is not None
                feeds, serving = self._slot
                self._slot = None
                self._running = True
            start = time.perf_counter()
            try:
                candidate = self.candidate_infer(feeds)
                elapsed = time.perf_counter() - start
                value = agreement(serving, dict(candidate), self.task, layout=self.layout, iou=self.iou)
                self.tracker.add(value, elapsed * 1000.0)
            except Exception as exc:
                elapsed = time.perf_counter() - start
                self.tracker.add_error()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.tracker.errors == 1:
                    log.warning("shadow candidate failed: %s", self.last_error)
            with self._cond:
                self._busy_s += elapsed
                self._tokens -= elapsed
                self._running = False
                self._cond.notify_all()

    # --- control and results -------------------------------------------------------------------

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no pair is queued or running (tests, and before reading a final verdict)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._slot is None and not self._running, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._slot = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def cpu_pct(self) -> float:
        """Candidate busy time as % of the wall time since the runner started."""
        wall = max(time.perf_counter() - self._started, 1e-9)
        return 100.0 * self._busy_s / wall

    def verdict(self) -> tuple[bool | None, str]:
        """(None, why) while fewer than ``min_samples`` inputs were shadowed; else pass/fail and why."""
        report = self.tracker.report()
        samples, errors = report["samples"], report["errors"]
        attempts = samples + errors
        if attempts and errors / attempts > self.max_error_rate:
            return False, f"candidate failed on {errors} of {attempts} shadowed inputs ({self.last_error})"
        if samples < self.spec.min_samples:
            return None, f"{samples} of {self.spec.min_samples} shadow samples so far"
        agreed = report["agreement"]
        if self.spec.min_agreement is not None and agreed < self.spec.min_agreement:
            return False, f"agreement {agreed:.3f} < {self.spec.min_agreement:.3f} over {samples} inputs"
        p95 = report["latency_ms"]["p95"]
        if self.spec.max_latency_ms is not None and p95 is not None and p95 > self.spec.max_latency_ms:
            return False, f"candidate p95 latency {p95:.2f} ms > {self.spec.max_latency_ms:.2f} ms"
        return True, f"agreement {agreed:.3f}, p95 {p95} ms over {samples} inputs"

    def report(self) -> dict[str, Any]:
        """The telemetry ``shadow`` section."""
        passed, reason = self.verdict()
        return {**self.tracker.report(), "task": self.task, "offered": self.offered, "sampled": self.sampled,
                "skipped_budget": self.skipped_budget, "skipped_busy": self.skipped_busy,
                "cpu_pct": round(self.cpu_pct(), 3), "busy_s": round(self._busy_s, 4),
                "sample_fraction": self.spec.sample_fraction,
                "cpu_budget_pct": self.spec.cpu_budget_pct, "passed": passed, "reason": reason}

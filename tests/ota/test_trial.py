"""TrialWatcher decisions on fed observations (exact figures)."""

from __future__ import annotations

from agent.ota.trial import TrialWatcher
from agent.wire import ModelMeta, TrialPolicy

NEW = ModelMeta(name="m", version=2, sha256="b" * 64)
OLD = ModelMeta(name="m", version=1, sha256="a" * 64)
POLICY = TrialPolicy(window_s=10, min_inferences=10, max_error_rate=0.1, max_latency_ratio=2.0,
                     max_p95_latency_ms=50)


def feed(watcher: TrialWatcher, n: int, latency_s: float, ok: bool = True, meta: ModelMeta = NEW) -> None:
    for _ in range(n):
        watcher(meta, latency_s, ok)


def test_clean_window_passes_only_after_window_and_min_inferences() -> None:
    watcher = TrialWatcher(POLICY, NEW, baseline_p95_ms=4.0)
    feed(watcher, 50, 0.005, meta=OLD)  # the old model's answers do not count
    feed(watcher, 9, 0.005)
    start = watcher.started
    assert not watcher.evaluate(start + 11).decided  # 9 < min_inferences
    feed(watcher, 1, 0.005)
    assert not watcher.evaluate(start + 5).decided  # window not over
    verdict = watcher.evaluate(start + 10.5)
    assert (verdict.decided, verdict.passed, verdict.metrics["inferences"], verdict.metrics["latency_ratio"]) == \
        (True, True, 10, 1.25)


def test_breaches() -> None:
    errors = TrialWatcher(POLICY, NEW, 4.0)
    feed(errors, 2, 0.005, ok=False)  # 2 errors > 0.1 * 10: cannot recover, breach before min_inferences
    verdict = errors.evaluate(errors.started)
    assert (verdict.decided, verdict.passed, verdict.reason) == (True, False,
                                                                 "error rate 100.0% over 2 inferences exceeds 10.0%")
    slow = TrialWatcher(POLICY, NEW, 4.0)
    feed(slow, 10, 0.010)
    assert slow.evaluate(slow.started).reason == \
        "p95 latency 10.00 ms is 2.5x the previous model's 4.00 ms (limit 2.0x)"
    absolute = TrialWatcher(POLICY, NEW, None)
    feed(absolute, 10, 0.060)
    assert absolute.evaluate(absolute.started).reason == "p95 latency 60.00 ms exceeds 50.00 ms"
    jitter = TrialWatcher(POLICY, NEW, 0.05)  # 0.2 ms vs 0.05 ms: 4x, but under the 1 ms floor
    feed(jitter, 10, 0.0002)
    assert not jitter.evaluate(jitter.started).decided

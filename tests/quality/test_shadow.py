from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from edgefleet.agent.quality import ShadowRunner
from edgefleet.agent.wire import ShadowSpec, Telemetry
from tests.quality.conftest import Infer
from tests.quality.support import scenes, to_tensor

FEEDS = [to_tensor(f) for f in scenes(seed=1, count=100)]


def shadow_all(runner: ShadowRunner, serving: Infer, feeds: list[dict[str, np.ndarray]]) -> None:
    for feed in feeds:
        runner.offer(feed, serving(feed))
        assert runner.wait_idle(5.0)


def test_identical_candidate_passes(serving: Infer, twin: Infer) -> None:
    spec = ShadowSpec(sample_fraction=0.5, cpu_budget_pct=100, min_samples=40, min_agreement=0.9,
                      max_latency_ms=1000)
    runner = ShadowRunner(twin, spec, "classification")
    try:
        shadow_all(runner, serving, FEEDS[:60])
        assert runner.verdict() == (None, "30 of 40 shadow samples so far")
        shadow_all(runner, serving, FEEDS[60:])
        passed, reason = runner.verdict()
        report = runner.report()
    finally:
        runner.stop()
    assert passed is True, reason
    assert report["offered"] == 100 and report["sampled"] == 50 and report["samples"] == 50
    assert report["agreement"] == 1.0 and report["errors"] == 0
    assert report["latency_ms"]["p95"] is not None and report["latency_ms"]["p95"] < 1000
    assert Telemetry(seq=1, ts=0.0, shadow=report).shadow == report


def test_disagreeing_candidate_is_held_back(serving: Infer, rival: Infer) -> None:
    spec = ShadowSpec(sample_fraction=1.0, cpu_budget_pct=100, min_samples=50, min_agreement=0.9)
    runner = ShadowRunner(rival, spec, "classification")
    try:
        shadow_all(runner, serving, FEEDS)
        passed, reason = runner.verdict()
        report = runner.report()
    finally:
        runner.stop()
    assert passed is False
    assert report["samples"] == 100 and report["agreement"] == pytest.approx(0.37)
    assert reason == "agreement 0.370 < 0.900 over 100 inputs"


def test_latency_bound_and_failing_candidate(serving: Infer, twin: Infer) -> None:
    def sleepy(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.004)
        return twin(feeds)

    slow = ShadowRunner(sleepy,
                        ShadowSpec(sample_fraction=1.0, cpu_budget_pct=100, min_samples=5, max_latency_ms=2.0),
                        "classification")
    broken = ShadowRunner(lambda feeds: {"scores": np.zeros((1, 7), np.float32)},  # wrong class count
                          ShadowSpec(sample_fraction=1.0, cpu_budget_pct=100, min_samples=5), "classification")
    try:
        shadow_all(slow, serving, FEEDS[:5])
        shadow_all(broken, serving, FEEDS[:5])
        slow_verdict, broken_verdict = slow.verdict(), broken.verdict()
    finally:
        slow.stop()
        broken.stop()
    assert slow_verdict[0] is False and slow_verdict[1].startswith("candidate p95 latency ")
    assert broken_verdict[0] is False
    assert broken_verdict[1].startswith("candidate failed on 5 of 5 shadowed inputs (ValueError: class scores differ")


def test_offer_never_waits_for_a_busy_candidate(serving: Infer) -> None:
    release = threading.Event()

    def stuck(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        release.wait(10)
        return serving(feeds)

    runner = ShadowRunner(stuck, ShadowSpec(sample_fraction=1.0, cpu_budget_pct=100), "classification",
                          burst_s=60.0)
    try:
        assert runner.offer(FEEDS[0], serving(FEEDS[0])) is True
        worst = 0.0
        for feed in FEEDS[1:21]:
            start = time.perf_counter()
            taken = runner.offer(feed, serving(feed))
            worst = max(worst, time.perf_counter() - start)
            assert taken is False
        assert runner.skipped_busy == 20
        assert worst < 0.05  # never waits for the 10 s candidate
        release.set()
        assert runner.wait_idle(5.0)
        assert runner.report()["samples"] == 1
    finally:
        release.set()
        runner.stop()


def serve_for(seconds: float, serving: Infer, runner: ShadowRunner | None) -> int:
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        feed = FEEDS[done % len(FEEDS)]
        outputs = serving(feed)
        if runner is not None:
            runner.offer(feed, outputs)
        done += 1
    return done


def test_cpu_budget_limits_a_slow_candidate_and_serving_keeps_its_rate(serving: Infer, twin: Infer) -> None:
    work = np.random.default_rng(0).random(150_000)

    def slow(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        np.sort(work)  # real CPU work (numpy lets go of the GIL)
        time.sleep(0.01)
        return twin(feeds)

    seconds, budget, burst = 1.2, 10.0, 0.05
    baseline = serve_for(seconds, serving, None) / seconds
    runner = ShadowRunner(slow, ShadowSpec(sample_fraction=1.0, cpu_budget_pct=budget), "classification",
                          burst_s=burst)
    try:
        start = time.perf_counter()
        served = 0
        # the candidate's thread runs at a lower priority: on a loaded box one run can take long enough to spend
        # the budget of a whole window, so serve on until it has run twice
        while not served or (runner.sampled < 2 and time.perf_counter() - start < 30):
            served += serve_for(seconds, serving, runner)
        with_shadow = served / (time.perf_counter() - start)
        runner.wait_idle(5.0)
        wall = time.perf_counter() - start
        report = runner.report()
    finally:
        runner.stop()
    again = serve_for(seconds, serving, None) / seconds
    longest_s = report["latency_ms"]["max"] / 1000
    # busy time <= the initial burst + budget * wall + the one run that overdraws the bucket
    busy_s = report["cpu_pct"] / 100 * wall
    assert busy_s <= burst + budget / 100 * wall + longest_s + 0.01
    assert report["samples"] >= 2
    assert report["skipped_budget"] > served / 2  # almost every offer was turned down by the budget
    # inferences per second, against the slower of the windows just before and after (a loaded box moves both)
    assert with_shadow >= 0.6 * min(baseline, again), (baseline, with_shadow, again)

"""The wire contract's latency buckets (agent/latency.py): relative error, bounds, encoding, exact merging,
and what ``InferenceStats.latency_hist`` refuses."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from edgefleet.agent import latency
from edgefleet.agent.wire import InferenceStats, LatencyHist
from edgefleet.server import latency as server_latency


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def test_relative_error_is_at_most_two_percent_over_the_whole_range() -> None:
    rng = random.Random(2)
    worst = 0.0
    for _ in range(200_000):
        ms = _log_uniform(rng, latency.MIN_MS * 1.000001, latency.MAX_MS)
        k = latency.bucket_of(ms)
        lower, upper = latency.bucket_bounds(k)
        assert lower < ms <= upper * (1 + 1e-12)
        worst = max(worst, abs(latency.bucket_value(k) - ms) / ms)
    assert 0.019 < worst <= latency.ALPHA + 1e-12  # the bound is reached, never passed


def test_boundaries_powers_and_the_special_buckets() -> None:
    assert abs(latency.GAMMA - 1.02 / 0.98) < 1e-15
    assert latency.BUCKETS == latency.I_HI - latency.I_LO + 2 == 507  # 1 µs .. 10 min plus the zero bucket
    for ms in (0.0, -1.0, float("nan"), latency.MIN_MS / 2, latency.MIN_MS):
        assert latency.bucket_of(ms) == latency.ZERO_BUCKET
    assert latency.bucket_value(latency.ZERO_BUCKET) == 0.0
    assert latency.bucket_of(latency.MIN_MS * 1.0001) == 1
    assert latency.bucket_of(latency.MAX_MS) == latency.BUCKETS - 1
    assert latency.bucket_of(1e12) == latency.BUCKETS - 1  # overflow: the last bucket
    for i in range(-50, 50):  # exact powers of gamma are the upper bound of their bucket (up to rounding)
        k = latency.bucket_of(latency.GAMMA ** i * (1 - 1e-12))
        assert latency.bucket_bounds(k)[1] == pytest.approx(latency.GAMMA ** i)
    values = [latency.bucket_value(k) for k in range(latency.BUCKETS)]
    assert values == sorted(values) and len(set(values)) == latency.BUCKETS
    with pytest.raises(ValueError):
        latency.bucket_value(latency.BUCKETS)


def test_encode_decode_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(500):
        sparse = {rng.randrange(latency.BUCKETS): rng.randrange(1, 1000) for _ in range(rng.randrange(0, 30))}
        doc = latency.encode(sparse)
        assert latency.decode(doc["offset"], doc["counts"]) == sparse  # type: ignore[arg-type]
        dense = [sparse.get(k, 0) for k in range(latency.BUCKETS)]
        assert latency.encode(dense) == doc
        if sparse:
            assert doc["counts"][0] and doc["counts"][-1]  # type: ignore[index]


def _histogram(values: list[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for ms in values:
        k = latency.bucket_of(ms)
        out[k] = out.get(k, 0) + 1
    return out


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_merging_devices_gives_the_percentiles_of_all_their_latencies() -> None:
    rng = random.Random(4)
    for trial in range(50):
        devices = [[rng.lognormvariate(rng.uniform(-1, 4), rng.uniform(0.1, 1.5)) for _ in range(rng.randrange(1, 400))]
                   for _ in range(rng.randrange(2, 12))]
        everything = [v for values in devices for v in values]
        merged = server_latency.merge(_histogram(values) for values in devices)
        assert merged == _histogram(everything)
        for q in (0.5, 0.9, 0.95, 0.99, 1.0):
            got = server_latency.quantile(merged, q)
            assert got == latency.quantile(_histogram(everything), q)
            exact = _exact(everything, q)
            assert got is not None and abs(got - exact) <= latency.ALPHA * exact * (1 + 1e-9), (trial, q)
    # an average of the two devices' p99s (50.5 ms) would say nothing of the fleet's: 99 % are at 1 ms
    fast, slow = [1.0] * 990, [100.0] * 10
    fleet = server_latency.merge([_histogram(fast), _histogram(slow)])
    assert server_latency.summary(fleet)["p99_ms"] == pytest.approx(1.0, rel=latency.ALPHA + 1e-9)
    assert server_latency.quantile(fleet, 0.995) == pytest.approx(100.0, rel=latency.ALPHA + 1e-9)
    assert server_latency.summary({})["count"] == 0 and server_latency.quantile({}, 0.5) is None


def test_the_wire_model_refuses_malformed_histograms() -> None:
    ok = InferenceStats.model_validate({"count": 10, "latency_hist": {"offset": 3, "counts": [4, 0, 6]}})
    assert ok.latency_hist is not None and ok.latency_hist.buckets() == {3: 4, 5: 6}
    assert InferenceStats.model_validate({"count": 3}).latency_hist is None  # an agent from before
    bad = [
        {"count": 10, "latency_hist": {"offset": 0, "counts": [0] * (latency.BUCKETS + 1)}},  # too many
        {"count": 10, "latency_hist": {"offset": latency.BUCKETS - 2, "counts": [1, 1, 1]}},  # past the last
        {"count": 10, "latency_hist": {"offset": -1, "counts": [1]}},
        {"count": 10, "latency_hist": {"offset": 0, "counts": [-1]}},
        {"count": 10, "latency_hist": {"offset": 0, "counts": [2**31]}},
        {"count": 10, "latency_hist": {"offset": 0, "counts": [1.0]}},
        {"count": 10, "latency_hist": {"offset": 0, "counts": [True]}},
        {"count": 10, "latency_hist": {"offset": "0", "counts": [1]}},
        {"count": 10, "latency_hist": {"offset": 0, "counts": "123"}},
        {"count": 10, "latency_hist": [1, 2]},
        {"count": 10, "latency_hist": {"offset": 0, "counts": [6, 5]}},  # counts more than inference.count
    ]
    for doc in bad:
        with pytest.raises(ValidationError):
            InferenceStats.model_validate(doc)
    assert LatencyHist().total == 0


def test_the_contract_module_imports_only_the_standard_library() -> None:
    import ast
    from pathlib import Path

    import edgefleet.agent.latency as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names <= {"__future__", "math", "collections"}

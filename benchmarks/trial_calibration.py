"""How often the device's trial and drift alarms are wrong, old rule against new, on simulated samples.

    .venv/bin/python benchmarks/trial_calibration.py [--trials 1000] [--windows 200] [--json]

1. Trial: ``--trials`` simulated trials per identical-model case (a quarter of that per slower
   one). Latencies are heavy-tailed (lognormal body, 3 % of inferences stalled 2-20x), 2 ms median;
   the first 3 candidate inferences are cold (2-4x). Cases: an identical model under the same load,
   an identical model with the load changing between the baseline window and the trial (x1.5-4 and
   more stalls, as when another process starts), and models 1.5x, 2x and 3x slower. The old rule:
   p95 over every candidate inference against the baseline window's p95, ratio over the limit and
   1 ms above. The new rule is ``agent.ota.trial.TrialWatcher`` itself (warm-up excluded, bootstrap
   CI, the previous model timed again under the trial's load). Both at --limit (default 1.25) and at
   the default policy's 2.0.
2. Drift: ``--windows`` healthy windows of 100 and 1000 frames of smooth synthetic "camera" scenes
   against a 64-frame reference: alarms of the old rule (max PSI > 0.25) and of the new one
   (``DriftMonitor``: PSI over 0.25 and significant at a 0.1 % false-alarm rate), then the detection
   of frames darkened to 0.7x and 0.5x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.ota.trial import RATIO_FLOOR_MS, TrialWatcher
from edgefleet.agent.quality.drift import DriftMonitor, build_reference_profile
from edgefleet.agent.wire import ModelMeta, TrialPolicy

NEW = ModelMeta(name="m", version=2, sha256="b" * 64)
BASELINE_N, CANDIDATE_N, COLD = 256, 60, 3
SCORES = {"scores": np.array([[0.1, 0.7, 0.2]], np.float32)}


def latencies(rng: np.random.Generator, n: int, median_ms: float, stall_rate: float = 0.03) -> np.ndarray:
    body = rng.lognormal(np.log(median_ms), 0.35, n)
    stalls = rng.random(n) < stall_rate
    body[stalls] *= rng.uniform(2.0, 20.0, int(stalls.sum()))
    return body / 1000.0


def one_trial(rng: np.random.Generator, slowdown: float, load_change: bool, limit: float,
              seed: int) -> tuple[bool, bool]:
    """(old rule rolls back, new rule rolls back) for one simulated trial."""
    base = latencies(rng, BASELINE_N, 2.0)
    load, stalls = (rng.uniform(1.5, 4.0), 0.08) if load_change else (1.0, 0.03)
    cold = latencies(rng, COLD, 2.0 * slowdown * load, stalls) * rng.uniform(2.0, 4.0, COLD)
    warm = latencies(rng, CANDIDATE_N, 2.0 * slowdown * load, stalls)
    candidate = np.concatenate([cold, warm])
    old_p95, base_p95 = (float(np.percentile(x, 95) * 1000) for x in (candidate, base))
    old = old_p95 / base_p95 > limit and old_p95 - base_p95 > RATIO_FLOOR_MS

    def previous_now() -> tuple[list[float], list[float]]:  # the trial's load on both models
        return (list(latencies(rng, 40, 2.0 * slowdown * load, stalls)),
                list(latencies(rng, 60, 2.0 * load, stalls)))

    policy = TrialPolicy(window_s=1, min_inferences=20, max_latency_ratio=limit, warmup_inferences=COLD, warmup_s=0)
    watcher = TrialWatcher(policy, NEW, None, baseline=list(base), paired=previous_now, seed=seed)
    for value in candidate:
        watcher(NEW, float(value), True)
    verdict = watcher.evaluate(watcher.started + 1.0)
    return old, verdict.decided and not verdict.passed


def trial_rates(trials: int, limit: float) -> dict[str, Any]:
    rng = np.random.default_rng(18)
    out: dict[str, Any] = {}
    cases = {"identical_same_load": (1.0, False), "identical_load_change": (1.0, True),
             "slower_1.5x": (1.5, False), "slower_2x": (2.0, False), "slower_3x": (3.0, False),
             "slower_2x_load_change": (2.0, True)}
    for name, (slowdown, load_change) in cases.items():
        count = trials if slowdown == 1.0 else max(20, trials // 4)  # detection needs fewer trials than ~0 rates
        results = [one_trial(rng, slowdown, load_change, limit, seed) for seed in range(count)]
        out[name] = {"trials": count, "old_rule_rollback_rate": round(sum(o for o, _ in results) / count, 4),
                     "new_rule_rollback_rate": round(sum(n for _, n in results) / count, 4)}
    return out


def scene(rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    light = rng.uniform(0.6, 1.0)
    cy, cx = rng.uniform(10, 38), rng.uniform(10, 54)
    image = 80 * light + 60 * (x / 64) + 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60.0)
    return np.clip((image + rng.normal(0, 4, image.shape)) * gain, 0, 255).astype(np.uint8)


def drift_rates(windows: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    reference = build_reference_profile([scene(rng) for _ in range(64)], [SCORES] * 64, "classification")
    out: dict[str, Any] = {}
    for size in (100, 1000):
        monitor = DriftMonitor(reference, window=size * 4 // 3 + 4, min_samples=size)
        old = new = 0
        count = windows if size == 100 else max(10, windows // 10)
        for _ in range(count):
            monitor.reset()
            for _ in range(size):
                monitor.observe(scene(rng), SCORES)
            report = monitor.report()
            old += report["max_psi"] > 0.25
            new += report["drifted"]
        out[f"healthy_window_{size}"] = {"windows": count, "old_rule_alarm_rate": round(old / count, 4),
                                         "new_rule_alarm_rate": round(new / count, 4)}
    for gain in (0.7, 0.5):
        monitor = DriftMonitor(reference, window=140, min_samples=100)
        detected = 0
        count = max(10, windows // 10)
        for _ in range(count):
            monitor.reset()
            for _ in range(100):
                monitor.observe(scene(rng, gain), SCORES)
            detected += monitor.report()["drifted"]
        out[f"darkened_{gain}x_window_100"] = {"windows": count, "new_rule_detection_rate": round(detected / count, 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--limit", type=float, default=1.25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    result = {"trials": args.trials,
              "trial": {f"limit_{args.limit:g}": trial_rates(args.trials, args.limit),
                        "limit_2": trial_rates(args.trials, 2.0)},
              "drift": drift_rates(args.windows)}
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for limit, cases in result["trial"].items():
        print(f"trial, {limit}: rollback rate old rule -> new rule")
        for name, rates in cases.items():
            print(f"  {name:<24} {rates['old_rule_rollback_rate']:7.1%} -> {rates['new_rule_rollback_rate']:7.1%}"
                  f"  ({rates['trials']} trials)")
    print("drift:")
    for name, rates in result["drift"].items():
        print(f"  {name:<24} " + ", ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in rates.items()))
    print(f"{result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

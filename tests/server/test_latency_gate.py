"""The p95 latency gate (server/latency_gate.py) and how evaluate_rollout applies it: pure, simulated fleets."""

from __future__ import annotations

import math
import random
import re

from edgefleet.server.latency_gate import (
    DeviceWindow,
    LatencyData,
    LatencySettings,
    PairedDevice,
    evaluate_latency,
    split_classes,
)
from edgefleet.server.rollouts import DeviceOutcome, Gates, evaluate_rollout

SETTINGS = LatencySettings(max_ratio=1.5, alpha=0.01, min_devices=3, min_samples=3)


def fleet(rng: random.Random, *, updated: int, control: int, slowdown: float = 1.0, load: float = 1.0,
          messages: int = 6, device_class: str | None = "rpi4", baselines: bool = False) -> LatencyData:
    """Devices with their own base p95 (lognormal spread 0.3), message noise 0.15 and a load factor applied to
    every device during the wave (with some spread per device); ``baselines``: with their pre-update means."""

    def window(device_id: str, factor: float) -> DeviceWindow:
        level = 2.0 * math.exp(rng.gauss(0, 0.3))
        base = level * load * math.exp(rng.gauss(0, 0.1)) * factor
        values = [base * math.exp(rng.gauss(0, 0.15)) for _ in range(messages)]
        before = sum(level * math.exp(rng.gauss(0, 0.15)) for _ in range(20)) / 20
        return DeviceWindow(device_id, device_class, sum(values) / len(values), len(values),
                            before if baselines else None)

    return LatencyData(updated=[window(f"u{i}", slowdown) for i in range(updated)],
                       control=[window(f"c{i}", 1.0) for i in range(control)], reporting=True)


def paired(rng: random.Random, *, devices: int, slowdown: float = 1.0, load_after: float = 1.0,
           before: int = 30, after: int = 6) -> LatencyData:
    pairs, windows = [], []
    for i in range(devices):
        base = 2.0 * math.exp(rng.gauss(0, 0.3))
        b = tuple(base * math.exp(rng.gauss(0, 0.15)) for _ in range(before))
        a = tuple(base * slowdown * load_after * math.exp(rng.gauss(0, 0.15)) for _ in range(after))
        pairs.append(PairedDevice(f"d{i}", b, a))
        windows.append(DeviceWindow(f"d{i}", "rpi4", sum(a) / len(a), len(a)))
    return LatencyData(updated=windows, control=[], paired=pairs, reporting=True)


def test_identical_model_under_a_load_shift_is_not_paused_over_many_seeds() -> None:
    # the load doubles during the wave for every device (the demo's "busy machine"): the concurrent control
    # compares it away
    pauses = sum(evaluate_latency(SETTINGS, fleet(random.Random(seed), updated=5, control=45, load=2.5),
                                  wave=1).status == "breach" for seed in range(400))
    assert pauses <= 2  # a false-pause rate at most 0.5 % (alpha is 1 %, and the ratio must also exceed 1.5)


def test_twice_as_slow_is_paused_with_the_figures_in_the_reason() -> None:
    verdicts = [evaluate_latency(SETTINGS, fleet(random.Random(seed), updated=5, control=45, slowdown=2.0,
                                                 load=2.5), wave=1) for seed in range(100)]
    assert sum(v.status == "breach" for v in verdicts) >= 90  # the effect size of 5 devices is noisy
    reason = next(v.reason for v in verdicts if v.status == "breach")
    assert reason is not None and reason.startswith("wave 2: p95 latency x")
    assert "(updated " in reason and "n=5 devices; control " in reason and "n=45; Mann-Whitney p=" in reason
    assert reason.endswith("< 0.01) above x1.50")


def test_devices_against_their_own_pre_update_window_take_out_that_boxes_differ() -> None:
    # 3 updated vs 6 control, 1.8x slower: boxes differing by a lognormal 0.3 hide it from the ms figures,
    # each device's ratio to its own pre-update mean does not
    seeds = range(200)
    relative = sum(evaluate_latency(SETTINGS, fleet(random.Random(s), updated=4, control=30, slowdown=1.8, load=2.0,
                                                    baselines=True), wave=0).status == "breach" for s in seeds)
    absolute = sum(evaluate_latency(SETTINGS, fleet(random.Random(s), updated=4, control=30, slowdown=1.8, load=2.0),
                                    wave=0).status == "breach" for s in seeds)
    assert relative > absolute
    assert relative >= 180
    false = sum(evaluate_latency(SETTINGS, fleet(random.Random(s), updated=4, control=30, load=2.0, baselines=True),
                                 wave=0).status == "breach" for s in range(400))
    assert false == 0
    verdict = evaluate_latency(SETTINGS, fleet(random.Random(0), updated=4, control=30, slowdown=2.0, baselines=True),
                               wave=0)
    assert "; each device against its pre-update window: updated x" in (verdict.reason or "")


def test_a_significant_but_small_slowdown_does_not_pause() -> None:
    # 1.2x slower on 30 vs 60 devices is significant, but under the x1.5 threshold
    verdict = evaluate_latency(SETTINGS, fleet(random.Random(1), updated=30, control=60, slowdown=1.2), wave=0)
    assert verdict.status == "pass"
    assert "Mann-Whitney p=" in (verdict.reason or "") and "p95 latency x1." in (verdict.reason or "")


def test_not_enough_messages_waits() -> None:
    data = fleet(random.Random(0), updated=5, control=45, messages=2)  # 2 messages each, 3 needed
    verdict = evaluate_latency(SETTINGS, data, wave=0)
    assert verdict.status == "wait"
    # with only some updated devices ready, it still waits rather than judge 2 devices
    mixed = LatencyData(updated=[*data.updated[:3], *fleet(random.Random(1), updated=2, control=0).updated],
                        control=fleet(random.Random(2), updated=0, control=45).control, reporting=True)
    assert [w.samples for w in mixed.updated] == [2, 2, 2, 6, 6]
    wait = evaluate_latency(SETTINGS, mixed, wave=0)
    assert wait.status == "wait"
    assert wait.reason == ("wave 1: latency gate waits: not enough data: devices with ≥3 messages in the window "
                           "(rpi4: updated 2, control 45; need 3 each)")


def test_no_latency_telemetry_has_nothing_to_judge() -> None:
    assert evaluate_latency(SETTINGS, LatencyData(), wave=0).status == "none"


def test_classes_are_compared_with_their_own_class() -> None:
    rng = random.Random(5)
    fast = fleet(rng, updated=5, control=20, device_class="jetson")
    slow_class = fleet(rng, updated=5, control=20, slowdown=2.0, device_class="rpi4")
    # the rpi4 controls are 10x slower than the jetsons: mixing classes would hide a 2x regression
    scaled = [DeviceWindow(w.device_id, w.device_class, w.mean_ms * 10, w.samples) for w in slow_class.updated]
    scaled_control = [DeviceWindow(w.device_id, w.device_class, w.mean_ms * 10, w.samples)
                      for w in slow_class.control]
    data = LatencyData(updated=[*fast.updated, *scaled], control=[*fast.control, *scaled_control], reporting=True)
    verdict = evaluate_latency(SETTINGS, data, wave=0)
    assert verdict.status == "breach"
    assert "on class rpi4" in (verdict.reason or "")


def test_no_control_left_falls_back_to_the_same_devices_before() -> None:
    slow = evaluate_latency(SETTINGS, paired(random.Random(0), devices=4, slowdown=2.0), wave=3)
    assert slow.status == "breach"
    assert slow.reason is not None and "against the same devices before the update" in slow.reason
    assert "n=4 devices, 24/120 messages; Mann-Whitney per device, Stouffer p=" in slow.reason
    same = [evaluate_latency(SETTINGS, paired(random.Random(s), devices=4), wave=3).status for s in range(200)]
    assert same.count("breach") == 0


def test_a_one_device_wave_is_judged_against_its_own_past() -> None:
    rng = random.Random(2)
    data = paired(rng, devices=1, slowdown=2.0)
    control = fleet(rng, updated=0, control=20).control
    verdict = evaluate_latency(SETTINGS, LatencyData(updated=data.updated, control=control, paired=data.paired,
                                                     reporting=True), wave=0)
    assert verdict.status == "breach" and "n=1 devices" in (verdict.reason or "")


def one_device_wave(rng: random.Random, *, slowdown: float, load: float) -> LatencyData:
    """1 updated device, 2 control ones, all loaded x``load`` in the window (the demo's 3 devices on one box)."""
    pairs, windows = [], []
    for i in range(3):
        base = 2.0 * math.exp(rng.gauss(0, 0.05))
        before = tuple(base * math.exp(rng.gauss(0, 0.15)) for _ in range(20))
        after = tuple(base * load * (slowdown if i == 0 else 1.0) * math.exp(rng.gauss(0, 0.15)) for _ in range(6))
        pairs.append(PairedDevice(f"d{i}", before, after))
        windows.append(DeviceWindow(f"d{i}", None, sum(after) / 6, 6))
    return LatencyData(updated=windows[:1], control=windows[1:], paired=pairs[:1], control_paired=pairs[1:],
                       reporting=True)


def test_a_one_device_wave_with_a_control_compares_relative_messages() -> None:
    loaded = [evaluate_latency(SETTINGS, one_device_wave(random.Random(s), slowdown=1.0, load=3.0), wave=0)
              for s in range(300)]
    assert sum(v.status == "breach" for v in loaded) <= 3
    slow = [evaluate_latency(SETTINGS, one_device_wave(random.Random(s), slowdown=2.0, load=3.0), wave=0)
            for s in range(100)]
    assert sum(v.status == "breach" for v in slow) >= 97
    reason = next(v.reason for v in slow if v.status == "breach") or ""
    assert re.fullmatch(r"wave 1: p95 latency x\d\.\d\d relative to each device's pre-update window \(updated "
                        r"\S+ ms, x\d\.\d\d of before, n=1 devices, 6 messages; control \S+ ms, x\d\.\d\d of "
                        r"before, n=2, 12 messages; Mann-Whitney p=\S+ < 0\.01\) above x1\.50", reason), reason


def test_the_paired_fallback_cannot_tell_load_from_the_model() -> None:
    # the documented weakness: a load shift between the pre-update window and the wave looks like a regression
    verdict = evaluate_latency(SETTINGS, paired(random.Random(0), devices=4, load_after=2.5), wave=3)
    assert verdict.status == "breach"


def test_a_pre_update_window_too_short_cannot_be_waited_for() -> None:
    data = paired(random.Random(0), devices=2, before=2, slowdown=2.0)
    verdict = evaluate_latency(SETTINGS, data, wave=3)
    assert verdict.status == "pass" and "no pre-update window" in (verdict.reason or "")


GATES = Gates(min_committed_ratio=0.5, max_failure_ratio=0.25, max_p95_regression=1.5, soak_s=10.0,
              latency_max_wait_s=60.0)
COMMITTED = [DeviceOutcome("committed")] * 5


def decide(latency: LatencyData | None, *, now: float = 100.0, healthy_since: float | None = 0.0,
           wave_started_at: float | None = 0.0):  # type: ignore[no-untyped-def]
    return evaluate_rollout(current_wave=0, wave_count=3, gates=GATES, outcomes=COMMITTED,
                            healthy_since=healthy_since, auto_revert=False, now=now, latency=latency,
                            wave_started_at=wave_started_at)


def test_rollout_pauses_on_a_latency_breach() -> None:
    d = decide(fleet(random.Random(0), updated=5, control=45, slowdown=2.0))
    assert d.action == "pause" and d.reason is not None and d.reason.startswith("wave 1: p95 latency x")


def test_rollout_waits_for_latency_data_then_advances_with_a_note() -> None:
    short = fleet(random.Random(0), updated=5, control=45, messages=1)
    waiting = decide(short, now=30.0)
    assert waiting.action == "wait" and "latency gate waits" in (waiting.reason or "")
    late = decide(short, now=61.0)
    assert late.action == "advance"
    assert (late.reason or "").startswith("latency gate not evaluated after 60 s: wave 1: latency gate waits")
    unbounded = Gates(soak_s=0.0, latency_max_wait_s=None)
    assert evaluate_rollout(current_wave=0, wave_count=3, gates=unbounded, outcomes=COMMITTED, healthy_since=0.0,
                            auto_revert=False, now=1e9, latency=short, wave_started_at=0.0).action == "wait"


def test_rollout_without_latency_telemetry_advances() -> None:
    assert decide(LatencyData()).action == "advance"
    assert decide(None).action == "advance"


def test_disabled_latency_gate_ignores_a_slowdown() -> None:
    off = Gates(soak_s=0.0, max_p95_regression=None)
    data = fleet(random.Random(0), updated=5, control=45, slowdown=3.0)
    assert evaluate_rollout(current_wave=0, wave_count=3, gates=off, outcomes=COMMITTED, healthy_since=0.0,
                            auto_revert=False, now=1.0, latency=data).action == "advance"


def test_failure_gate_still_wins_over_latency() -> None:
    outcomes = [DeviceOutcome("committed"), DeviceOutcome("rolled_back")]
    d = evaluate_rollout(current_wave=0, wave_count=3, gates=GATES, outcomes=outcomes, healthy_since=None,
                         auto_revert=True, now=1.0, latency=fleet(random.Random(0), updated=5, control=45,
                                                                 slowdown=2.0))
    assert d.action == "abort" and (d.reason or "").startswith("wave 1: failure ratio 1/2")


def test_zero_p95s_do_not_divide_by_zero() -> None:
    zeros = (0.0, 0.0, 0.0, 0.0)
    data = LatencyData(updated=[DeviceWindow("u", None, 0.0, 4, 0.0)], control=[DeviceWindow("c", None, 0.0, 4, 0.0)],
                       paired=[PairedDevice("u", zeros, zeros)], control_paired=[PairedDevice("c", zeros, zeros)],
                       reporting=True)
    assert evaluate_latency(SETTINGS, data, wave=0).status == "pass"
    cohorts = LatencyData(updated=[DeviceWindow(f"u{i}", None, 1.0, 4, 0.0) for i in range(5)],
                          control=[DeviceWindow(f"c{i}", None, 0.0, 4) for i in range(5)], reporting=True)
    assert evaluate_latency(SETTINGS, cohorts, wave=0).status == "breach"  # 1 ms against 0 ms: x inf


def test_devices_just_committed_without_messages_yet_are_waited_for() -> None:
    # right after the commit (inside the warm-up) the updated devices have no messages in their window
    rng = random.Random(0)
    control = fleet(rng, updated=0, control=20).control
    fresh = LatencyData(updated=[DeviceWindow(f"u{i}", "rpi4", 0.0, 0) for i in range(5)], control=control,
                        reporting=True)
    assert evaluate_latency(SETTINGS, fresh, wave=0).status == "wait"
    canary = LatencyData(updated=[DeviceWindow("u0", "rpi4", 0.0, 0)], control=control, reporting=True,
                         paired=[PairedDevice("u0", (2.0,) * 10, ())],
                         control_paired=[PairedDevice(w.device_id, (2.0,) * 10, (2.0,) * 6) for w in control])
    assert evaluate_latency(SETTINGS, canary, wave=0).status == "wait"


def test_an_underpowered_comparison_waits_instead_of_passing() -> None:
    # 1 canary 2x slower with 3 messages, 1 of its 2 control devices ready with 3: no test of 3 against 3 can
    # reach p < 0.01 (1/20 at best), so it waits rather than pass and advance on it
    before = (2.0,) * 10
    slow = (4.0, 4.1, 4.2)
    data = LatencyData(updated=[DeviceWindow("u", None, 4.1, 3)],
                       control=[DeviceWindow("c0", None, 2.0, 3), DeviceWindow("c1", None, 2.0, 1)],
                       paired=[PairedDevice("u", before, slow)],
                       control_paired=[PairedDevice("c0", before, (2.0, 2.1, 1.9)), PairedDevice("c1", before, (2.0,))],
                       reporting=True)
    assert evaluate_latency(SETTINGS, data, wave=0).status == "wait"
    more = LatencyData(updated=data.updated, control=data.control, paired=[PairedDevice("u", before, (*slow, 4.0))],
                       control_paired=[PairedDevice("c0", before, (2.0, 2.1, 1.9, 2.0)),
                                       PairedDevice("c1", before, (2.0, 1.95, 2.05, 2.02))], reporting=True)
    assert evaluate_latency(SETTINGS, more, wave=0).status == "breach"
    # 3 devices a side cannot reach p < 0.01 by devices (1/20): the messages decide
    three = fleet(random.Random(0), updated=3, control=3)
    assert split_classes(SETTINGS, three).relative == {"rpi4"}


def test_a_large_ratio_not_yet_significant_waits_for_more_messages() -> None:
    # the demo's 1-device wave of a 2x model under load: x2.02 but p=0.013 on its first 6 messages; it used to
    # pass (and the wave advance) on that; it waits, and the next messages decide
    before = (2.0,) * 10
    control = [(2.0, 2.1, 1.9, 2.05, 1.95), (2.02, 1.98, 2.2, 1.8, 2.0)]

    def canary(after: tuple[float, ...]) -> LatencyData:
        return LatencyData(updated=[DeviceWindow("u", None, sum(after) / len(after), len(after))],
                           control=[DeviceWindow(f"c{i}", None, 2.0, len(a)) for i, a in enumerate(control)],
                           paired=[PairedDevice("u", before, after)],
                           control_paired=[PairedDevice(f"c{i}", before, a) for i, a in enumerate(control)],
                           reporting=True)

    first = evaluate_latency(SETTINGS, canary((4.0, 4.2, 1.85, 4.1, 3.9, 4.3)), wave=0)
    assert first.status == "wait"
    assert "inconclusive: p95 latency x2.02" in (first.reason or "") and "p=0.013 ≥ 0.01) above x1.50" in (
        first.reason or "")
    assert evaluate_latency(SETTINGS, canary((4.0, 4.2, 1.85, 4.1, 3.9, 4.3, 4.1, 4.0)), wave=0).status == "breach"
    # under the threshold, not significant: passes as before
    assert evaluate_latency(SETTINGS, canary((2.4, 2.6, 1.85, 2.5, 2.3, 2.2)), wave=0).status == "pass"
    # and a rollout waits on it at most latency_max_wait_s, as for too little data
    assert decide(canary((4.0, 4.2, 1.85, 4.1, 3.9, 4.3)), now=30.0).action == "wait"
    assert decide(canary((4.0, 4.2, 1.85, 4.1, 3.9, 4.3)), now=61.0).action == "advance"


def test_an_inconclusive_cohort_or_paired_comparison_waits_too() -> None:
    # 3 updated devices x2 against 7 control by devices: p = 1/120 only when all 3 rank above all 7
    up = [DeviceWindow(f"u{i}", "rpi4", v, 6, 2.0) for i, v in enumerate((4.0, 4.1, 1.9))]
    ctl = [DeviceWindow(f"c{i}", "rpi4", v, 6, 2.0) for i, v in enumerate((2.0, 1.95, 2.05, 2.1, 1.9, 2.02, 2.0))]
    cohorts = evaluate_latency(SETTINGS, LatencyData(updated=up, control=ctl, reporting=True), wave=1)
    assert cohorts.status == "wait" and "inconclusive: p95 latency x" in (cohorts.reason or "")
    noisy = LatencyData(updated=[DeviceWindow("d0", "rpi4", 4.0, 5)], control=[], reporting=True,
                        paired=[PairedDevice("d0", (2.0, 2.1, 1.9, 2.2, 4.5, 2.0, 1.95, 2.05, 2.1, 4.4),
                                             (4.0, 4.2, 1.95, 4.1, 2.0))])
    paired_verdict = evaluate_latency(SETTINGS, noisy, wave=3)
    assert paired_verdict.status == "wait" and "inconclusive" in (paired_verdict.reason or "")

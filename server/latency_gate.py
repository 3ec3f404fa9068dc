"""The p95 latency gate of a wave (pure): updated devices against a concurrent control cohort.

Per device class, the devices updated so far (committed, their telemetry with the new version since they
committed plus a warm-up) are compared with the rollout's devices still on a previous version in the same
time window: one figure per device (the mean of its telemetry p95s in the window), a one-sided Mann-Whitney
U test (updated slower), and the effect size, the ratio of the two cohorts' medians. A class needs
``min_devices`` devices on each side, each with ``min_samples`` messages; below that:

- with enough control devices but too few updated ones the gate waits for them;
- with too few control devices (the last wave, a class fully updated) or too few updated ones and no way to
  get more (a 1-device wave), the same devices are compared with their own pre-update window (paired):
  per device a Mann-Whitney test of its messages after against before, combined over devices by Stouffer's
  method, the effect the median over devices of (median after / median before).

A breach needs both: p < ``alpha`` and the ratio above ``max_ratio``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from server.stats import mann_whitney_greater, median, stouffer

Status = Literal["pass", "breach", "wait", "none"]


@dataclass(frozen=True)
class LatencySettings:
    max_ratio: float = 1.5
    alpha: float = 0.01
    min_devices: int = 3
    min_samples: int = 3
    warmup_s: float = 10.0
    baseline_s: float = 300.0
    max_wait_s: float | None = 900.0


@dataclass(frozen=True)
class DeviceWindow:
    """One device's telemetry p95s in a window, summarized: mean and how many messages."""

    device_id: str
    device_class: str | None
    mean_ms: float
    samples: int


@dataclass(frozen=True)
class PairedDevice:
    device_id: str
    before: tuple[float, ...]  # p95s of its messages in the pre-update window (previous version)
    after: tuple[float, ...]  # since it committed plus the warm-up (new version)


@dataclass(frozen=True)
class LatencyData:
    updated: Sequence[DeviceWindow] = ()
    control: Sequence[DeviceWindow] = ()
    paired: Sequence[PairedDevice] | None = None  # fetched only when some class needs the fallback
    reporting: bool = False  # whether any device of the rollout reported a p95 in the gate's windows


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str | None = None
    details: list[str] = field(default_factory=list)


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.0001 else f"{value:.1e}"


def split_classes(settings: LatencySettings, data: LatencyData) -> tuple[
        dict[str | None, tuple[list[float], list[float]]], set[str | None], dict[str | None, tuple[int, int]]]:
    """Classes judged against a concurrent control (their figures), classes that fall back to the paired
    comparison (too few devices on a side to ever compare cohorts: a 1-device wave, the last wave), and classes
    waiting for messages (updated and control devices ready so far)."""
    ready_up: dict[str | None, list[float]] = defaultdict(list)
    ready_ctl: dict[str | None, list[float]] = defaultdict(list)
    all_up: dict[str | None, int] = defaultdict(int)
    all_ctl: dict[str | None, int] = defaultdict(int)
    for w in data.updated:
        all_up[w.device_class] += 1
        if w.samples >= settings.min_samples:
            ready_up[w.device_class].append(w.mean_ms)
    for w in data.control:
        all_ctl[w.device_class] += 1
        if w.samples >= settings.min_samples:
            ready_ctl[w.device_class].append(w.mean_ms)
    concurrent: dict[str | None, tuple[list[float], list[float]]] = {}
    paired: set[str | None] = set()
    waiting: dict[str | None, tuple[int, int]] = {}
    for c in all_up:
        if all_up[c] < settings.min_devices or all_ctl[c] < settings.min_devices:
            paired.add(c)
        elif len(ready_up[c]) >= settings.min_devices and len(ready_ctl[c]) >= settings.min_devices:
            concurrent[c] = (ready_up[c], ready_ctl[c])
        else:
            waiting[c] = (len(ready_up[c]), len(ready_ctl[c]))
    return concurrent, paired, waiting


def needs_paired(settings: LatencySettings, data: LatencyData) -> set[str | None]:
    return split_classes(settings, data)[1]


def evaluate_latency(settings: LatencySettings, data: LatencyData, *, wave: int) -> Verdict:
    if not data.reporting or not data.updated:
        return Verdict("none", "no latency telemetry to judge")
    concurrent, paired_classes, waiting = split_classes(settings, data)
    multi = len({w.device_class for w in data.updated}) > 1
    details: list[str] = []
    for device_class, (up, ctl) in sorted(concurrent.items(), key=lambda kv: str(kv[0])):
        test = mann_whitney_greater(up, ctl)
        up_med, ctl_med = median(up), median(ctl)
        ratio = up_med / ctl_med if ctl_med > 0 else float("inf")
        where = f" on class {device_class}" if multi and device_class is not None else ""
        detail = (f"p95 latency x{ratio:.2f}{where} (updated {_ms(up_med)}, n={len(up)} devices; control "
                  f"{_ms(ctl_med)}, n={len(ctl)}; Mann-Whitney p={_p(test.p)}")
        if test.p < settings.alpha and ratio > settings.max_ratio:
            return Verdict("breach", f"wave {wave + 1}: {detail} < {settings.alpha:g}) above x{settings.max_ratio:.2f}")
        details.append(f"{detail})")
    waiting_reason: str | None = None
    if paired_classes:
        members = [w.device_id for w in data.updated if w.device_class in paired_classes]
        verdict = _paired(settings, data, members, wave)
        if verdict.status == "breach":
            return verdict
        if verdict.reason:
            details.append(verdict.reason)
        if verdict.status == "wait":
            waiting_reason = verdict.reason
    if waiting:
        counts = ", ".join(f"{c or 'no class'}: updated {up}, control {ctl}"
                           for c, (up, ctl) in sorted(waiting.items(), key=lambda kv: str(kv[0])))
        waiting_reason = (f"not enough data: devices with ≥{settings.min_samples} messages in the window "
                          f"({counts}; need {settings.min_devices} each)")
    if waiting_reason:
        return Verdict("wait", f"wave {wave + 1}: latency gate waits: {waiting_reason}", details)
    return Verdict("pass", "; ".join(details) or None, details)


def _paired(settings: LatencySettings, data: LatencyData, members: Sequence[str], wave: int) -> Verdict:
    wanted = set(members)
    pairs = [d for d in data.paired or () if d.device_id in wanted]
    usable = [d for d in pairs if len(d.before) >= settings.min_samples]
    if not usable:
        return Verdict("pass", f"no pre-update window with ≥{settings.min_samples} messages to compare "
                               f"{len(members)} updated device(s) with")
    ready = [d for d in usable if len(d.after) >= settings.min_samples]
    if not ready:
        return Verdict("wait", f"not enough data: no device with ≥{settings.min_samples} messages since commit + "
                               f"{settings.warmup_s:g} s warm-up to compare with its pre-update window")
    p = stouffer([mann_whitney_greater(d.after, d.before).p for d in ready])
    ratios = [median(d.after) / median(d.before) for d in ready if median(d.before) > 0]
    ratio = median(ratios) if ratios else float("inf")
    after_med = median([median(d.after) for d in ready])
    before_med = median([median(d.before) for d in ready])
    messages = f"{sum(len(d.after) for d in ready)}/{sum(len(d.before) for d in ready)} messages"
    detail = (f"p95 latency x{ratio:.2f} against the same devices before the update (after {_ms(after_med)}, "
              f"before {_ms(before_med)}, n={len(ready)} devices, {messages}; Mann-Whitney per device, "
              f"Stouffer p={_p(p)}")
    if p < settings.alpha and ratio > settings.max_ratio:
        return Verdict("breach", f"wave {wave + 1}: {detail} < {settings.alpha:g}) above x{settings.max_ratio:.2f}")
    return Verdict("pass", f"{detail})")


__all__ = ["DeviceWindow", "LatencyData", "LatencySettings", "PairedDevice", "Verdict", "evaluate_latency",
           "needs_paired", "split_classes"]

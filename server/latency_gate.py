"""The p95 latency gate of a wave (pure): updated devices against a concurrent control cohort.

Per device class, the devices updated so far (committed: their telemetry with the new version since they
committed plus a warm-up) are compared with the rollout's devices still on a previous version in the same
time window. Three ways, by how many devices each side has:

- cohorts (``min_devices`` or more on each side, each with ``min_samples`` messages in the window): one
  figure per device, the mean of its telemetry p95s in the window divided by the mean of its own pre-update
  window (``baseline_s``; the plain mean in ms where fewer than ``min_devices`` a side have one), a one-sided
  Mann-Whitney U test (updated slower), the effect size the ratio of the two cohorts' medians. Too few
  messages yet: it waits.
- relative (fewer devices on a side, at least one control device: a 1-device canary, a 3-device fleet):
  every device's messages in the window divided by the median of its own pre-update window
  (``baseline_s`` before the updated devices were assigned), updated against control messages with one
  Mann-Whitney test. The device's own baseline takes out that boxes differ, the control takes out the load.
- paired (no control device left: the last wave, a class fully updated): the same devices after against
  before, a Mann-Whitney test per device combined by Stouffer's method, the effect the median over devices
  of (median after / median before). A load change between the two windows looks like a regression here.

A breach needs both: p < ``alpha`` and the ratio above ``max_ratio``. A ratio above ``max_ratio`` with
p not yet below ``alpha`` is inconclusive: the gate waits for more messages (at most ``max_wait_s``), so
a slower model does not pass a wave on the few messages it was first judged by.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgefleet.server.stats import mann_whitney_greater, median, min_p_value, stouffer

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
    baseline_ms: float | None = None  # the mean of its pre-update window, when that has min_samples messages


@dataclass(frozen=True)
class PairedDevice:
    device_id: str
    before: tuple[float, ...]  # p95s of its messages in the pre-update window (previous version)
    after: tuple[float, ...]  # updated: since it committed plus the warm-up (new version); control: the window


@dataclass(frozen=True)
class LatencyData:
    updated: Sequence[DeviceWindow] = ()
    control: Sequence[DeviceWindow] = ()
    paired: Sequence[PairedDevice] | None = None  # updated devices' raw p95s, when a class is judged relative
    control_paired: Sequence[PairedDevice] | None = None  # or paired; the control's, when one is relative
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


def _judged(settings: LatencySettings, p: float, ratio: float, detail: str, wave: int) -> Verdict:
    """breach: significant and above the threshold; wait: above it, not (yet) significant; else pass."""
    if ratio > settings.max_ratio:
        if p < settings.alpha:
            return Verdict("breach", f"wave {wave + 1}: {detail} < {settings.alpha:g}) above x{settings.max_ratio:.2f}")
        return Verdict("wait", f"inconclusive: {detail} ≥ {settings.alpha:g}) above x{settings.max_ratio:.2f}, "
                               f"waiting for more messages")
    return Verdict("pass", f"{detail})")


@dataclass
class Split:
    concurrent: dict[str | None, tuple[list[DeviceWindow], list[DeviceWindow]]] = field(default_factory=dict)
    relative: set[str | None] = field(default_factory=set)  # few devices on a side, some control
    paired: set[str | None] = field(default_factory=set)  # no control at all
    waiting: dict[str | None, tuple[int, int]] = field(default_factory=dict)  # devices ready so far per side


def split_classes(settings: LatencySettings, data: LatencyData) -> Split:
    """How each class of the updated devices is judged."""
    ready_up: dict[str | None, list[DeviceWindow]] = defaultdict(list)
    ready_ctl: dict[str | None, list[DeviceWindow]] = defaultdict(list)
    all_up: dict[str | None, int] = defaultdict(int)
    all_ctl: dict[str | None, int] = defaultdict(int)
    for w in data.updated:
        all_up[w.device_class] += 1
        if w.samples >= settings.min_samples:
            ready_up[w.device_class].append(w)
    for w in data.control:
        all_ctl[w.device_class] += 1
        if w.samples >= settings.min_samples:
            ready_ctl[w.device_class].append(w)
    split = Split()
    for c in list(all_up):
        if all_up[c] >= settings.min_devices and all_ctl[c] >= settings.min_devices \
                and min_p_value(all_up[c], all_ctl[c]) < settings.alpha:
            up_n, ctl_n = len(ready_up[c]), len(ready_ctl[c])
            if up_n >= settings.min_devices and ctl_n >= settings.min_devices \
                    and min_p_value(up_n, ctl_n) < settings.alpha:
                split.concurrent[c] = (ready_up[c], ready_ctl[c])
            else:
                split.waiting[c] = (len(ready_up[c]), len(ready_ctl[c]))
        elif all_ctl[c]:  # too few devices for a test of devices to reach alpha: one of messages
            split.relative.add(c)
        else:
            split.paired.add(c)
    return split


def evaluate_latency(settings: LatencySettings, data: LatencyData, *, wave: int) -> Verdict:
    if not data.reporting or not data.updated:
        return Verdict("none", "no latency telemetry to judge")
    split = split_classes(settings, data)
    multi = len({w.device_class for w in data.updated}) > 1
    details: list[str] = []
    waits: list[str] = []

    def where(device_class: str | None) -> str:
        return f" on class {device_class}" if multi and device_class is not None else ""

    for device_class, (up_w, ctl_w) in sorted(split.concurrent.items(), key=lambda kv: str(kv[0])):
        up_ms, ctl_ms = median([w.mean_ms for w in up_w]), median([w.mean_ms for w in ctl_w])
        up_rel = [w.mean_ms / w.baseline_ms for w in up_w if w.baseline_ms]
        ctl_rel = [w.mean_ms / w.baseline_ms for w in ctl_w if w.baseline_ms]
        relative = len(up_rel) >= settings.min_devices and len(ctl_rel) >= settings.min_devices
        up, ctl = (up_rel, ctl_rel) if relative else ([w.mean_ms for w in up_w], [w.mean_ms for w in ctl_w])
        test = mann_whitney_greater(up, ctl)
        ratio = median(up) / median(ctl) if median(ctl) > 0 else float("inf")
        how = (f"; each device against its pre-update window: updated x{median(up):.2f}, control x{median(ctl):.2f}"
               if relative else "")
        detail = (f"p95 latency x{ratio:.2f}{where(device_class)} (updated {_ms(up_ms)}, n={len(up)} devices; "
                  f"control {_ms(ctl_ms)}, n={len(ctl)}{how}; Mann-Whitney p={_p(test.p)}")
        judged = _judged(settings, test.p, ratio, detail, wave)
        if judged.status == "breach":
            return judged
        details.append(judged.reason or "")
        if judged.status == "wait":
            waits.append(judged.reason or "")
    paired_members = [w.device_id for w in data.updated if w.device_class in split.paired]
    for device_class in sorted(split.relative, key=str):
        members = [w.device_id for w in data.updated if w.device_class == device_class]
        controls = [w.device_id for w in data.control if w.device_class == device_class]
        verdict = _relative(settings, data, members, controls, wave, where(device_class))
        if verdict is None:  # no control device has a pre-update window: the updated ones on their own
            paired_members += members
            continue
        if verdict.status == "breach":
            return verdict
        details.append(verdict.reason or "")
        if verdict.status == "wait":
            waits.append(verdict.reason or "")
    if paired_members:
        verdict = _paired(settings, data, paired_members, wave)
        if verdict.status == "breach":
            return verdict
        details.append(verdict.reason or "")
        if verdict.status == "wait":
            waits.append(verdict.reason or "")
    if split.waiting:
        counts = ", ".join(f"{c or 'no class'}: updated {up}, control {ctl}"
                           for c, (up, ctl) in sorted(split.waiting.items(), key=lambda kv: str(kv[0])))
        waits.append(f"not enough data: devices with ≥{settings.min_samples} messages in the window "
                     f"({counts}; need {settings.min_devices} each)")
    if waits:
        return Verdict("wait", f"wave {wave + 1}: latency gate waits: {'; '.join(waits)}", details)
    return Verdict("pass", "; ".join(details) or None, details)


def _baseline(settings: LatencySettings, device: PairedDevice) -> bool:
    """Whether a device's pre-update window can be compared with: enough messages, a median above 0."""
    return len(device.before) >= settings.min_samples and median(device.before) > 0


def _relative(settings: LatencySettings, data: LatencyData, members: Sequence[str], controls: Sequence[str],
              wave: int, where: str) -> Verdict | None:
    """Messages relative to each device's own pre-update median, updated against control; None: no control
    device has a usable pre-update window."""
    wanted, wanted_ctl = set(members), set(controls)
    up = [d for d in data.paired or () if d.device_id in wanted and _baseline(settings, d)]
    ctl = [d for d in data.control_paired or () if d.device_id in wanted_ctl and _baseline(settings, d)]
    if not ctl:
        return None
    if not up:
        return Verdict("pass", f"no pre-update window with ≥{settings.min_samples} messages to compare "
                               f"{len(members)} updated device(s){where} with")
    up_ready = [d for d in up if len(d.after) >= settings.min_samples]
    ctl_ready = [d for d in ctl if len(d.after) >= settings.min_samples]
    need_up, need_ctl = min(settings.min_devices, len(up)), min(settings.min_devices, len(ctl))
    x = [a / median(d.before) for d in up_ready for a in d.after]
    y = [a / median(d.before) for d in ctl_ready for a in d.after]
    if len(up_ready) < need_up or len(ctl_ready) < need_ctl or min_p_value(len(x), len(y)) >= settings.alpha:
        return Verdict("wait", f"not enough data: updated {len(up_ready)} devices{where}, {len(x)} messages, control "
                               f"{len(ctl_ready)}, {len(y)} messages with ≥{settings.min_samples} messages in the "
                               f"window (need {need_up} and {need_ctl}, and enough messages to reach "
                               f"p < {settings.alpha:g})")
    test = mann_whitney_greater(x, y)
    ratio = median(x) / median(y) if median(y) > 0 else float("inf")
    up_ms = median([a for d in up_ready for a in d.after])
    ctl_ms = median([a for d in ctl_ready for a in d.after])
    detail = (f"p95 latency x{ratio:.2f}{where} relative to each device's pre-update window (updated {_ms(up_ms)}, "
              f"x{median(x):.2f} of before, n={len(up_ready)} devices, {len(x)} messages; control {_ms(ctl_ms)}, "
              f"x{median(y):.2f} of before, n={len(ctl_ready)}, {len(y)} messages; Mann-Whitney p={_p(test.p)}")
    return _judged(settings, test.p, ratio, detail, wave)


def _paired(settings: LatencySettings, data: LatencyData, members: Sequence[str], wave: int) -> Verdict:
    wanted = set(members)
    pairs = [d for d in data.paired or () if d.device_id in wanted]
    usable = [d for d in pairs if _baseline(settings, d)]
    if not usable:
        return Verdict("pass", f"no pre-update window with ≥{settings.min_samples} messages to compare "
                               f"{len(members)} updated device(s) with")
    ready = [d for d in usable if len(d.after) >= settings.min_samples]
    need = min(settings.min_devices, len(usable))
    if len(ready) < need or stouffer([min_p_value(len(d.after), len(d.before)) for d in ready]) >= settings.alpha:
        return Verdict("wait", f"not enough data: {len(ready)} devices with ≥{settings.min_samples} messages since "
                               f"commit + {settings.warmup_s:g} s warm-up to compare with their pre-update window "
                               f"(need {need}, and enough messages to reach p < {settings.alpha:g})")
    p = stouffer([mann_whitney_greater(d.after, d.before).p for d in ready])
    ratios = [median(d.after) / median(d.before) for d in ready if median(d.before) > 0]
    ratio = median(ratios) if ratios else float("inf")
    after_med = median([median(d.after) for d in ready])
    before_med = median([median(d.before) for d in ready])
    messages = f"{sum(len(d.after) for d in ready)}/{sum(len(d.before) for d in ready)} messages"
    detail = (f"p95 latency x{ratio:.2f} against the same devices before the update (after {_ms(after_med)}, "
              f"before {_ms(before_med)}, n={len(ready)} devices, {messages}; Mann-Whitney per device, "
              f"Stouffer p={_p(p)}")
    return _judged(settings, p, ratio, detail, wave)


__all__ = ["DeviceWindow", "LatencyData", "LatencySettings", "PairedDevice", "Split", "Verdict", "evaluate_latency",
           "split_classes"]

"""Reference profiles and live drift scores (population stability index per statistic).

The server builds a ``ReferenceProfile`` for a model version from sample inputs when it
validates the version; the profile fixes every statistic's bins (interior edges, or the
classes for the top-1 class) and the proportions seen there. A device's ``DriftMonitor``
bins its live traffic with the very same edges over a sliding window and reports, per
statistic, PSI = sum((a - e) * ln(a / e)) over the bins (proportions floored at ``EPSILON``).
PSI < 0.1 is usually read as "no shift", 0.1-0.25 "moderate", > 0.25 "significant".

A statistic drifts only when its PSI is both above ``threshold`` (large) and above the PSI that a
window of that many observations exceeds by chance with probability ``false_alarm_rate / stats``
(significant; Bonferroni over the profile's statistics, so a healthy device alarms with probability
at most ``false_alarm_rate`` per report, for independent observations): small windows and small
reference profiles need a larger PSI. A profile made from synthetic inputs (``synthetic``) shows
what the model does on noise, not what the camera sees: it is scored, but raises no alarm unless
``alarm_on_synthetic``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.agent.quality.stats import (
    INPUT_STATS,
    SIZE_STATS,
    WindowedHistogram,
    bin_index,
    classifier_stats,
    input_stats,
    output_values,
    psi_critical,
    tensor_to_frames,
)
from edgefleet.agent.wire import PreprocessSpec

EPSILON = 1e-4
DEFAULT_THRESHOLD = 0.25
DEFAULT_FALSE_ALARM_RATE = 0.001
SYNTHETIC_REASON = "reference is synthetic"
Task = Literal["classification", "detection", "other"]


class StatProfile(BaseModel):
    """One statistic's reference distribution. ``numeric``: ``len(edges) + 1`` bins with open outer
    bins; ``categorical``: one bin per listed category plus a last "other" bin."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    kind: Literal["numeric", "categorical"]
    edges: list[float] = Field(default_factory=list)
    categories: list[int] = Field(default_factory=list)
    expected: list[float]

    @property
    def bins(self) -> int:
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1

    @model_validator(mode="after")
    def _consistent(self) -> StatProfile:
        if len(self.expected) != self.bins:
            raise ValueError(f"{len(self.expected)} expected proportions for {self.bins} bins")
        if any(b <= a for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)):
            raise ValueError("edges must increase strictly")
        if any(p < 0 for p in self.expected) or abs(sum(self.expected) - 1.0) > 1e-6:
            raise ValueError("expected proportions must be >= 0 and sum to 1")
        return self


class ReferenceProfile(BaseModel):
    """What a model version's traffic looked like at validation time. Statistic names:
    ``input.<brightness|contrast|blur|aspect|pixels>``, ``output.top1_class``,
    ``output.top1_score`` (classifiers) and ``output.<name>`` (values of each output otherwise)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), defer_build=True)
    format: Literal[1] = 1
    model: str | None = None
    version: int | None = None
    task: Task = "other"
    samples: int = Field(ge=0)
    classifier_output: str | None = None
    stats: dict[str, StatProfile]
    created_at: float = Field(default_factory=time.time)
    synthetic: bool = False  # made from synthetic inputs (no calibration data): no alarm by default

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, doc: Any) -> ReferenceProfile:
        """Parse a profile; a bad document raises ``ValueError`` with a one-line reason."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "profile"
            raise ValueError(f"invalid reference profile: {where}: {first['msg']}") from None


def _numeric_profile(values: np.ndarray, weights: np.ndarray | None, bins: int) -> StatProfile:
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    # an edge between two distinct reference values, not on one: a statistic that takes few values (a camera
    # cycling a few scenes) must not change bins on a last-digit difference between device and server
    atoms = np.unique(values)
    above = np.searchsorted(atoms, quantiles, side="right")
    inner = above < atoms.size
    quantiles = (atoms[above[inner] - 1] + atoms[above[inner]]) / 2.0  # a quantile at the top value: no edge
    edges = [float(e) for e in np.unique(quantiles)] if atoms.size > 1 else [float(atoms[0])]
    top = float(values.max())
    if not edges or edges[-1] >= top:  # degenerate top: anything above the reference max gets its own bin
        edges.append(float(np.nextafter(top, math.inf)))
    indices = np.searchsorted(np.asarray(edges), values, side="right")
    counts = np.bincount(indices, weights=weights, minlength=len(edges) + 1)
    return StatProfile(kind="numeric", edges=edges, expected=[float(c) for c in counts / counts.sum()])


def _categorical_profile(values: Sequence[int], max_categories: int) -> StatProfile:
    classes, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    kept = sorted(int(c) for c in classes[order])
    total = float(counts.sum())
    expected = [float(counts[classes == c][0]) / total for c in kept]
    expected.append(max(0.0, 1.0 - sum(expected)))
    return StatProfile(kind="categorical", categories=kept, expected=expected)


def build_reference_profile(frames: Iterable[np.ndarray | None], outputs: Iterable[Mapping[str, np.ndarray]],
                            task: str, *, model: str | None = None, version: int | None = None,
                            bins: int = 10, max_categories: int = 32, exclude: Iterable[str] = (),
                            classifier_output: str | None = None) -> ReferenceProfile:
    """Profile sample ``frames`` (BGR/gray uint8 images; ``None`` entries skipped) and the model's
    ``outputs`` on them. ``exclude`` drops statistics by short name (e.g. ``SIZE_STATS``)."""
    if task not in ("classification", "detection", "other"):
        raise ValueError(f"unknown task {task!r}: classification, detection or other")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    skip = set(exclude)
    columns: dict[str, list[float]] = {name: [] for name in INPUT_STATS if name not in skip}
    n_frames = 0
    for frame in frames:
        if frame is None:
            continue
        row = input_stats(np.asarray(frame))
        n_frames += 1
        for name, values in columns.items():
            values.append(row[name])
    stats: dict[str, StatProfile] = {}
    if n_frames:
        for name, values in columns.items():
            stats[f"input.{name}"] = _numeric_profile(np.asarray(values), None, bins)

    n_outputs = 0
    top_class: list[int] = []
    top_score: list[float] = []
    per_output: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for out in outputs:
        n_outputs += 1
        if task == "classification":
            pair = classifier_stats(out, classifier_output)
            if pair is None:
                raise ValueError("classification outputs carry no class scores (an output with > 1 value)")
            top_class.append(pair[0])
            top_score.append(pair[1])
            continue
        for name, array in out.items():
            sampled = output_values(array)
            if sampled.size == 0:
                continue
            bucket = per_output.setdefault(name, ([], []))
            bucket[0].append(sampled)
            bucket[1].append(np.full(sampled.size, 1.0 / sampled.size))
    if task == "classification" and top_class:
        if "top1_class" not in skip:
            stats["output.top1_class"] = _categorical_profile(top_class, max_categories)
        if "top1_score" not in skip:
            stats["output.top1_score"] = _numeric_profile(np.asarray(top_score), None, bins)
    for name, (chunks, weights) in per_output.items():
        if name not in skip:
            stats[f"output.{name}"] = _numeric_profile(np.concatenate(chunks), np.concatenate(weights), bins)
    if not stats:
        raise ValueError("no samples to profile: give frames and/or outputs")
    return ReferenceProfile(model=model, version=version, task=task, samples=max(n_frames, n_outputs),  # type: ignore[arg-type]
                            classifier_output=classifier_output, stats=stats)


def profile_from_samples(infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
                         samples: Mapping[str, np.ndarray], task: str, *, image_input: str | None = None,
                         preprocess: PreprocessSpec | None = None, **kwargs: Any) -> ReferenceProfile:
    """Server side: run ``infer`` on each row of ``samples`` (arrays by input name, batch axis first,
    e.g. calibration data) and profile outputs plus, when ``image_input`` names a 4-D input, the
    images recovered from it by undoing ``preprocess``. Size statistics are left out: model-input
    tensors are already resized. ``kwargs`` go to :func:`build_reference_profile`."""
    arrays = {name: np.asarray(value) for name, value in samples.items()}
    counts = {len(v) for v in arrays.values()}
    if len(counts) != 1:
        raise ValueError(f"sample arrays disagree on the sample count: {sorted(counts)}")
    count = counts.pop()
    outputs = [dict(infer({name: v[i:i + 1] for name, v in arrays.items()})) for i in range(count)]
    frames: list[np.ndarray] = []
    if image_input is not None:
        if image_input not in arrays:
            raise ValueError(f"no sample input named {image_input!r} (have {sorted(arrays)})")
        spec = preprocess or PreprocessSpec()
        layout = spec.layout if spec.layout != "auto" else "auto"
        frames = list(tensor_to_frames(arrays[image_input], layout=layout, color=spec.color, mean=spec.mean,
                                       std=spec.std, scale=spec.scale))
    exclude = set(kwargs.pop("exclude", ())) | set(SIZE_STATS)
    return build_reference_profile(frames, outputs, task, exclude=exclude, **kwargs)


def psi(expected: Sequence[float], actual: np.ndarray) -> float:
    """Population stability index of ``actual`` counts against ``expected`` proportions."""
    total = float(actual.sum())
    if total <= 0:
        return 0.0
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(actual / total, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """The device side: bins live frames/outputs with a profile's edges over a sliding window.

    ``observe`` is the hot path (a few tens of µs; ``every=N`` looks at one call in N) and never
    raises: a frame or output it cannot read is counted in ``errors``. ``report()`` is the
    telemetry ``drift`` section. Thread-safe: observe and report may run on different threads.
    """

    def __init__(self, profile: ReferenceProfile, *, window: int = 1000, every: int = 1,
                 threshold: float = DEFAULT_THRESHOLD, min_samples: int = 100,
                 false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, alarm_on_synthetic: bool = False) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if not 0.0 < false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
        self.false_alarm_rate = false_alarm_rate
        self.alarm_on_synthetic = alarm_on_synthetic
        self.profile = profile
        self.window = window
        self.every = every
        self.threshold = threshold
        self.min_samples = min_samples
        self._hists = {name: WindowedHistogram(stat.bins, window) for name, stat in profile.stats.items()}
        self._input = [(name, name.split(".", 1)[1], stat.edges) for name, stat in profile.stats.items()
                       if name.startswith("input.")]
        self._class_bins: dict[int, int] = {}
        class_stat = profile.stats.get("output.top1_class")
        if class_stat is not None:
            self._class_bins = {c: i for i, c in enumerate(class_stat.categories)}
        self._class_other = len(self._class_bins)
        score_stat = profile.stats.get("output.top1_score")
        self._score_edges = score_stat.edges if score_stat is not None else None
        self._outputs = {name.split(".", 1)[1]: np.asarray(stat.edges) for name, stat in profile.stats.items()
                         if name.startswith("output.") and name not in ("output.top1_class", "output.top1_score")}
        self._lock = threading.Lock()
        self._calls = 0
        self.observed = 0
        self.errors = 0
        self.last_error: str | None = None

    def observe(self, frame: np.ndarray | None, outputs: Mapping[str, np.ndarray] | None) -> None:
        self._calls += 1
        if (self._calls - 1) % self.every:
            return
        try:
            updates = self._bins(frame, outputs)
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.observed += 1
            for name, index in updates:
                if isinstance(index, int):
                    self._hists[name].add(index)
                else:
                    self._hists[name].add_spread(index)

    def _bins(self, frame: np.ndarray | None,
              outputs: Mapping[str, np.ndarray] | None) -> list[tuple[str, int | np.ndarray]]:
        updates: list[tuple[str, int | np.ndarray]] = []
        if frame is not None and self._input:
            row = input_stats(frame)
            updates.extend((name, bin_index(edges, row[short])) for name, short, edges in self._input)
        if outputs:
            if self._score_edges is not None or self._class_bins:
                pair = classifier_stats(outputs, self.profile.classifier_output)
                if pair is not None:
                    if "output.top1_class" in self._hists:
                        updates.append(("output.top1_class", self._class_bins.get(pair[0], self._class_other)))
                    if self._score_edges is not None:
                        updates.append(("output.top1_score", bin_index(self._score_edges, pair[1])))
            for name, edges in self._outputs.items():
                value = outputs.get(name)
                if value is not None:
                    updates.append((f"output.{name}", np.searchsorted(edges, output_values(value), side="right")))
        return updates

    def reset(self) -> None:
        with self._lock:
            self._hists = {name: WindowedHistogram(stat.bins, self.window)
                           for name, stat in self.profile.stats.items()}
            self.observed = 0

    def report(self) -> dict[str, Any]:
        """``{"model", "version", "samples", "observed", "errors", "threshold", "psi": {stat: value},
        "critical": {stat: PSI needed at the false-alarm rate}, "false_alarm_rate", "max_psi", "max_stat",
        "drifted", "ready", "synthetic"[, "reason"]}``; ``drifted`` only once ``samples >= min_samples``,
        for a statistic over both ``threshold`` and its critical PSI; ``max_stat`` is the worst by PSI."""
        with self._lock:
            snapshot = {name: (hist.n, hist.counts()) for name, hist in self._hists.items()}
            observed = self.observed
        scores: dict[str, float] = {}
        critical: dict[str, float] = {}
        samples = 0
        alpha = self.false_alarm_rate / max(1, len(snapshot))
        for name, (n, counts) in snapshot.items():
            samples = max(samples, n)
            if n:
                stat = self.profile.stats[name]
                scores[name] = round(psi(stat.expected, counts), 6)
                support = sum(1 for p in stat.expected if p > 0)
                critical[name] = round(psi_critical(support, n, self.profile.samples, alpha), 6)
        worst = max(scores, key=lambda k: scores[k]) if scores else None
        max_psi = scores[worst] if worst is not None else 0.0
        ready = samples >= self.min_samples
        alarms = [name for name, value in scores.items() if value > self.threshold and value > critical[name]]
        muted = self.profile.synthetic and not self.alarm_on_synthetic
        report: dict[str, Any] = {
            "model": self.profile.model, "version": self.profile.version, "samples": samples,
            "observed": observed, "errors": self.errors, "threshold": self.threshold, "psi": scores,
            "critical": critical, "false_alarm_rate": self.false_alarm_rate, "max_psi": max_psi,
            "max_stat": worst, "drifted": bool(ready and alarms and not muted), "ready": ready,
            "synthetic": self.profile.synthetic,
        }
        if muted:
            report["reason"] = SYNTHETIC_REASON
        elif ready and alarms:
            report["drifted_stats"] = sorted(alarms)
        return report


def summarize_fleet(latest: Mapping[str, Mapping[str, Any] | None],
                    threshold: float | None = None) -> dict[str, Any]:
    """Server side: from each device's latest telemetry ``drift`` section (device id -> section or
    None), the devices that drifted and, per model version, how many of its reporting devices did.
    ``threshold`` overrides each report's own."""
    devices: list[dict[str, Any]] = []
    versions: dict[str, dict[str, Any]] = {}
    for device_id, section in sorted(latest.items()):
        if not section or not section.get("ready"):
            continue
        max_psi = float(section.get("max_psi") or 0.0)
        if threshold is None and isinstance(section.get("drifted"), bool):
            drifted = bool(section["drifted"])  # the device judged with its window's size and false-alarm rate
        else:
            limit = threshold if threshold is not None else float(section.get("threshold") or DEFAULT_THRESHOLD)
            drifted = max_psi > limit and section.get("reason") != SYNTHETIC_REASON
        key = f"{section.get('model')}@{section.get('version')}"
        entry = versions.setdefault(key, {"model": section.get("model"), "version": section.get("version"),
                                          "devices": 0, "drifted": 0})
        entry["devices"] += 1
        if drifted:
            entry["drifted"] += 1
            devices.append({"device_id": device_id, "model": section.get("model"),
                            "version": section.get("version"), "max_psi": max_psi,
                            "max_stat": section.get("max_stat")})
    for entry in versions.values():
        entry["drifted_fraction"] = round(entry["drifted"] / entry["devices"], 4)
    return {"drifted_devices": devices, "versions": versions}

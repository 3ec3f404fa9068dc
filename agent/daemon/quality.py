"""The daemon's side of model quality: live drift against the serving model's reference profile,
and (off by default) a small sample store that is uploaded only when the operator asks.

Profiles arrive with the update manifest: the OTA client saves each one under
``state_dir/quality/profiles/<model sha256>.json`` before it swaps the model in, so a swap (an
update, a rollback, a restart) finds the profile of whatever serves. A model from ``model.path``
takes ``quality.drift.profile``. A swap replaces the monitor: the window starts empty.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.config import QualitySection
from edgefleet.agent.quality import DriftMonitor, ReferenceProfile, SampleStore
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

log = logging.getLogger(__name__)
UPLOAD_BATCH = 20  # samples per POST


def profiles_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "quality" / "profiles"


def save_profile(state_dir: Path, sha256: str, profile: dict[str, Any]) -> Path:
    """Validate and keep a manifest's drift profile for the model with ``sha256`` (atomic write)."""
    from edgefleet.agent.ota.fsutil import atomic_write_json  # here: agent.ota imports this module

    ReferenceProfile.from_dict(profile)  # a bad document raises ValueError here, not at swap time
    path = profiles_dir(state_dir) / f"{sha256}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, profile)
    return path


class QualityMonitor:
    def __init__(self, config: QualitySection, state_dir: Path | None, *, device_class: str | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.device_class = device_class
        self.monitor: DriftMonitor | None = None
        self.profile_note: str | None = None  # why there is no monitor
        self._sha: str | None = None
        self._cost_ns = 0  # time spent in DriftMonitor.observe, for the report's cost figure
        self._cost_calls = 0
        self._lock = threading.Lock()
        self.store: SampleStore | None = None
        samples = config.samples
        if samples.enabled and state_dir is not None:
            self.store = SampleStore(state_dir / "samples", max_count=samples.max_count,
                                     max_bytes=int(samples.max_mb * 1024 * 1024), per_hour=samples.per_hour,
                                     max_side=samples.max_side, grayscale=samples.grayscale)

    # --- swap ------------------------------------------------------------------------------------

    def _find_profile(self, meta: ModelMeta, from_config: bool) -> ReferenceProfile | None:
        candidates: list[Path] = []
        if self.state_dir is not None and meta.sha256:
            candidates.append(profiles_dir(self.state_dir) / f"{meta.sha256}.json")
        if from_config and self.config.drift.profile is not None:
            candidates.append(self.config.drift.profile)
        for path in candidates:
            if not path.is_file():
                continue
            try:
                return ReferenceProfile.from_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("drift profile %s is unusable: %s", path, exc)
        return None

    def on_swap(self, _model: Model, meta: ModelMeta, *, from_config: bool = False) -> None:
        """A new model serves: a fresh monitor on its profile, or none (and say why)."""
        monitor = None
        note = None
        if not self.config.drift.enabled:
            note = "drift monitoring is off (quality.drift.enabled)"
        else:
            profile = self._find_profile(meta, from_config)
            if profile is None:
                note = f"no reference profile for {meta.name} v{meta.version}"
            else:
                drift = self.config.drift
                monitor = DriftMonitor(profile, window=drift.window, every=drift.every, threshold=drift.threshold,
                                       min_samples=drift.min_samples, false_alarm_rate=drift.false_alarm_rate,
                                       alarm_on_synthetic=drift.alarm_on_synthetic)
        with self._lock:
            self.monitor, self.profile_note, self._sha = monitor, note, meta.sha256
            self._cost_ns = self._cost_calls = 0
        log.info("drift: %s", "monitoring " + f"{meta.name} v{meta.version}" if monitor else note)

    # --- hot path ----------------------------------------------------------------------------------

    def observe(self, frame: np.ndarray | None, outputs: dict[str, np.ndarray], meta: ModelMeta) -> None:
        """After an inference of the loop (or the local API); never raises."""
        monitor = self.monitor
        if monitor is not None and meta.sha256 == self._sha:
            start = time.perf_counter_ns()
            monitor.observe(frame, outputs)
            self._cost_ns += time.perf_counter_ns() - start
            self._cost_calls += 1
        store = self.store
        if store is not None and frame is not None:
            try:
                store.maybe_store(frame, outputs, model=meta.name, version=meta.version, task=meta.task,
                                  device_class=self.device_class)
            except Exception as exc:  # a full disk must not stop inference
                log.warning("sample not stored: %s", exc)

    # --- telemetry and commands --------------------------------------------------------------------

    def drift_report(self) -> dict[str, Any] | None:
        monitor = self.monitor
        if monitor is None:
            return {"enabled": False, "reason": self.profile_note} if self.profile_note else None
        report = monitor.report()
        calls = self._cost_calls
        # mean cost per served inference (binned or skipped by `every`), on the inference thread
        report["cost_us_per_frame"] = round(self._cost_ns / calls / 1000.0, 2) if calls else None
        report["every"] = monitor.every
        return report

    def sample_batches(self, limit: int | None = None) -> list[list[dict[str, Any]]]:
        """Stored samples as upload bodies: ``[{"record": {...}, "jpeg_b64": "..."}]`` in batches."""
        store = self.store
        if store is None:
            return []
        ids = store.ids()[: limit or None]
        items = []
        for sample_id in ids:
            try:
                record = store.record(sample_id)
                jpeg = (store.directory / f"{sample_id}.jpg").read_bytes()
            except (OSError, ValueError, KeyError):
                continue
            items.append({"record": record, "jpeg_b64": base64.b64encode(jpeg).decode()})
        return [items[i:i + UPLOAD_BATCH] for i in range(0, len(items), UPLOAD_BATCH)]

    def forget(self, ids: list[str]) -> None:
        if self.store is not None:
            for sample_id in ids:
                self.store.delete(sample_id)


def upload_samples(quality: QualityMonitor, api: Any, device_id: str, *, limit: int | None = None,
                   delete: bool = True) -> dict[str, Any]:
    """The ``upload_samples`` command: POST the stored samples to the server, then (by default) drop them."""
    if quality.store is None:
        return {"uploaded": 0, "reason": "samples are off (quality.samples.enabled)"}
    uploaded = 0
    for batch in quality.sample_batches(limit):
        api.upload_samples(device_id, batch)
        uploaded += len(batch)
        if delete:
            quality.forget([item["record"]["id"] for item in batch])
    return {"uploaded": uploaded, "kept": len(quality.store) if quality.store else 0}


__all__ = ["QualityMonitor", "profiles_dir", "save_profile", "upload_samples"]

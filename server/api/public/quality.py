"""Bodies of the model quality routes: drift, reference profiles, samples, labels and accuracy."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.server.api.public import Public, Reported, Timestamp
from edgefleet.server.api.public.devices import DriftFlag
from edgefleet.server.api.public.registry import ProfileSummary


class DriftedDevice(Public):
    device_id: str
    model: Reported
    version: Reported
    max_psi: float
    max_stat: Reported


class VersionDriftCount(Public):
    model: Reported
    version: Reported
    devices: int
    drifted: int
    drifted_fraction: float


class VersionDrift(Public):
    model: str
    version: int
    reporting: int
    ready: int
    drifted: int
    drifted_fraction: float
    flagged: bool
    drifted_devices: list[DriftedDevice]
    devices: dict[str, DriftFlag | None]
    profile: ProfileSummary | None


class FleetDrift(Public):
    drifted_devices: list[DriftedDevice]
    versions: dict[str, VersionDriftCount] = Field(description="by name@version")
    devices: dict[str, DriftFlag | None]


class ProfileDoc(Public):
    source: str | None
    profile: dict[str, Any] = Field(description="agent.quality.drift.ReferenceProfile")


class SamplesStored(Public):
    stored: int


class SamplePublic(Public):
    device_id: str
    id: str
    model: str | None
    version: int | None
    device_class: str | None
    prediction: Reported
    ts: Timestamp | None
    label: int | str | None
    labelled_at: Timestamp | None


class SampleList(Public):
    samples: list[SamplePublic]


class Labelled(Public):
    labelled: int
    cleared: int


class AccuracyCell(Public):
    n: int
    correct: int
    accuracy: float | None


class Accuracy(Public):
    model: str | None
    overall: AccuracyCell
    by_version: dict[str, AccuracyCell]
    by_device_class: dict[str, AccuracyCell]
    by_version_and_device_class: dict[str, AccuracyCell]
    unlabeled: int
    no_prediction: int

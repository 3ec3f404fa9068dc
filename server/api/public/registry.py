"""Bodies of the model registry routes: models, versions, variants and the deltas into a version."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.agent.wire import PreprocessSpec, RuntimeHints, TensorSpec
from edgefleet.server.api.public import Public, Sha256, Timestamp


class ProfileSummary(Public):
    """The version's reference drift profile, in brief (the whole profile: GET .../profile)."""

    source: str | None = Field(description="calibration | synthetic | none")
    samples: int | None
    task: str | None
    stats: list[str]
    created_at: Timestamp | None


class VariantPublic(Public):
    name: str
    status: str = Field(description="building | ready | failed")
    format: str | None
    sha256: Sha256 | None
    size: int | None
    device_classes: list[str]
    report: dict[str, Any] = Field(description="the validation report (accuracy, latency, size) or why it failed")
    job_id: int | None
    created_at: Timestamp


class VersionPublic(Public):
    model: str
    version: int
    sha256: Sha256
    size: int
    format: str
    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None
    preprocess: PreprocessSpec | None
    runtime: RuntimeHints | None
    calibration_sha256: Sha256 | None
    created_at: Timestamp
    drift_profile: ProfileSummary | None


class VersionDetail(VersionPublic):
    variants: list[VariantPublic]


class VersionUploaded(VersionDetail):
    drift_profile_note: str | None = Field(default=None, description="present when the profile is only a stand-in")


class ModelPublic(Public):
    name: str
    task: str
    created_at: Timestamp
    latest_version: int | None
    format: str | None
    versions: list[VersionPublic] = Field(description="GET /v1/models: the latest only; GET /v1/models/{name}: all")


class ModelList(Public):
    models: list[ModelPublic]


class VersionDelta(Public):
    from_sha256: Sha256
    to_sha256: Sha256
    to_variant: str
    algorithm: str
    size: int
    full_size: int
    ratio: float | None = Field(description="size of the delta over the full artifact")
    chosen: bool = Field(description="whether a manifest offers this delta to a device running from_sha256")


class VariantList(Public):
    model: str
    version: int
    variants: list[VariantPublic]
    deltas: list[VersionDelta]

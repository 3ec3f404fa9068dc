"""Bodies of the device routes: the operator's view of devices, their telemetry and events, enrollment,
and the signed manifest a device fetches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from edgefleet.agent.wire import Manifest
from edgefleet.agent.wire import SignedManifest as WireSignedManifest
from edgefleet.server.api.public import Public, Timestamp


class IngestCounts(Public):
    rejected: int = Field(description="messages of this device refused by ingestion")
    last_reason: str | None
    last_rejected_at: Timestamp | None
    ts_replaced: int = Field(description="messages whose timestamp was replaced by the receive time")


class Desired(Public):
    version_id: int
    rollout_id: int | None
    revert: bool
    issued_at: Timestamp | None
    generation: int = Field(description="grows with every change of the desired state")


class DevicePublic(Public):
    device_id: str
    device_class: str | None
    tags: list[str]
    online: bool
    session: int
    last_seen: Timestamp | None
    enrolled_at: Timestamp | None
    agent_version: str | None
    model_name: str | None
    model_version: int | None
    model_sha256: str | None
    runtime: str | None
    delegate: str | None
    p95_ms: float | None
    cpu_pct: float | None
    update_state: str | None
    update_reason: str | None
    hw: dict[str, Any] = Field(description="the device's hardware probe, as it reported it")
    enrollment: Literal["enrolled", "pending", "unenrolled"]
    pending_since: Timestamp | None
    epoch: int
    ingest: IngestCounts
    desired: Desired | None


class DriftFlag(Public):
    """The compact drift flag from a device's latest telemetry ``drift`` section (a value of the wrong type
    in the device's report is null here)."""

    model: str | None
    version: int | None
    drifted: bool | None
    ready: bool | None
    max_psi: float | None
    max_stat: str | None
    samples: int | None
    threshold: float | None
    synthetic: bool | None = Field(default=None, description="the reference profile was made from synthetic "
                                                             "inputs: scored, no alarm by default")
    reason: str | None = Field(default=None, description="why no alarm can be raised, e.g. 'reference is synthetic'")


class DeviceView(DevicePublic):
    drift: DriftFlag | None


class DeviceList(Public):
    devices: list[DeviceView]


class EpochSummary(Public):
    epoch: int
    messages: int = Field(description="telemetry and events stored in this epoch (they share one seq)")
    first_seq: int
    last_seq: int
    missing: int = Field(description="seq numbers between first and last with no stored message")
    last_received: Timestamp


class TelemetryRow(Public):
    epoch: int
    seq: int
    ts: Timestamp
    ts_replaced: bool
    received_at: Timestamp
    model_name: str | None
    model_version: int | None
    runtime: str | None
    count: int | None
    errors: int | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    fps: float | None
    cpu_pct: float | None
    mem_mb: float | None
    rss_mb: float | None
    temp_c: float | None
    payload: dict[str, Any] = Field(description="the telemetry message as stored (agent.wire Telemetry)")


class RollupRow(Public):
    bucket: Timestamp = Field(description="start of the hour")
    samples: int
    count: int | None
    errors: int | None
    p95_ms: float | None
    p95_max_ms: float | None
    cpu_pct: float | None
    model_version: int | None


class TelemetryPage(Public):
    device_id: str
    epochs: list[EpochSummary]
    telemetry: list[TelemetryRow] = Field(description="oldest first")
    rollups: list[RollupRow] | None = Field(default=None, description="only with rollups=true")


class EventRow(Public):
    epoch: int
    seq: int
    ts: Timestamp
    ts_replaced: bool
    type: str
    payload: dict[str, Any]


class EventPage(Public):
    device_id: str
    events: list[EventRow] = Field(description="oldest first")


class EnrollmentToken(Public):
    device_id: str
    enrollment_token: str
    expires_at: Timestamp


class SignedManifest(WireSignedManifest):
    """agent.wire.SignedManifest with its ``manifest`` shown as the Manifest it holds. The route sends the
    signed bytes as they were signed (RFC 8785 form: ``signatures`` and ``root_version``; legacy form:
    ``signature`` and ``key_id``)."""

    model_config = ConfigDict(title="SignedManifest")
    manifest: Manifest  # type: ignore[assignment]  # documentation only


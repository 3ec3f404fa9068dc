"""Tables. Times are UNIX seconds (float), as on the wire."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import true

# a 64-bit id for the high-volume tables (SQLite's rowid alias must be spelled INTEGER; it is 64-bit anyway)
ROW_ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    device_class: Mapped[str | None] = mapped_column(String(64), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    hw: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enrolled_at: Mapped[float | None] = mapped_column(Float)
    # enrollment waiting for the operator (enrollment.mode: approve): the token it was given, not yet valid
    pending_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    pending_since: Mapped[float | None] = mapped_column(Float)
    # live state from MQTT `status` and telemetry; (epoch, session) of the newest status applied
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    session: Mapped[int] = mapped_column(BigInteger, default=-1)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    # ingestion: messages of this device refused (and why, last), and timestamps replaced by the receive time
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected_reason: Mapped[str | None] = mapped_column(Text)
    rejected_at: Mapped[float | None] = mapped_column(Float)
    ts_replaced: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen: Mapped[float | None] = mapped_column(Float)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    runtime: Mapped[str | None] = mapped_column(String(64))
    delegate: Mapped[str | None] = mapped_column(String(64))
    p95_ms: Mapped[float | None] = mapped_column(Float)
    cpu_pct: Mapped[float | None] = mapped_column(Float)
    update_state: Mapped[str | None] = mapped_column(String(32))
    update_reason: Mapped[str | None] = mapped_column(Text)
    # desired state: what the signed manifest says; issued_at is kept so re-signing is stable
    desired_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    desired_rollout_id: Mapped[int | None] = mapped_column(Integer)
    desired_revert: Mapped[bool] = mapped_column(Boolean, default=False)
    desired_issued_at: Mapped[float | None] = mapped_column(Float)
    # grows with every change of the desired state (reverts too); the manifest carries it (anti-replay)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # what the last manifest sent to the device offered: {"artifact": sha256, "delta": [from, to] | null};
    # a device token downloads only these
    offered: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # samples the device may still upload, until when: set by an upload_samples command
    samples_allowed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    samples_until: Mapped[float | None] = mapped_column(Float)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task: Mapped[str] = mapped_column(String(32), default="other")
    created_at: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(32), default="other")
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    labels: Mapped[list[str] | None] = mapped_column(JSON)
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    runtime_hints: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    calibration_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    # agent.quality.drift.ReferenceProfile JSON; source: calibration | synthetic | none (why in the profile doc)
    drift_profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    drift_profile_source: Mapped[str | None] = mapped_column(String(32))


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("version_id", "name", name="uq_variant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    device_classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # building | ready | failed
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # the replica running it and until when its claim holds (the database's clock); renewed while it runs
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[float | None] = mapped_column(Float)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    waves: Mapped[list[int]] = mapped_column(JSON)  # cumulative device counts
    waves_spec: Mapped[Any] = mapped_column(JSON)  # as the operator gave them
    gates: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    trial: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    auto_revert: Mapped[bool] = mapped_column(Boolean, default=False)
    push: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())  # check_update at wave starts
    state: Mapped[str] = mapped_column(String(16), index=True)  # running | paused | completed | aborted
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float | None] = mapped_column(Float)
    healthy_since: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    # pending | assigned | downloading | ... | committed | rolled_back | rejected | failed | superseded | reverted
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    previous_version_id: Mapped[int | None] = mapped_column(Integer)
    baseline_p95_ms: Mapped[float | None] = mapped_column(Float)
    assigned_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float | None] = mapped_column(Float)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the device's shadow report for this version


class Telemetry(Base):
    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("device_id", "epoch", "seq", name="uq_telemetry_epoch_seq"),
        Index("ix_telemetry_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)  # the device's, or received_at when that was out of range
    ts_replaced: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    runtime: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int | None] = mapped_column(Integer)
    errors: Mapped[int | None] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    cpu_pct: Mapped[float | None] = mapped_column(Float)
    mem_mb: Mapped[float | None] = mapped_column(Float)
    rss_mb: Mapped[float | None] = mapped_column(Float)
    temp_c: Mapped[float | None] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class TelemetryRollup(Base):
    """Hourly aggregates of telemetry older than ``downsample_after_hours``."""

    __tablename__ = "telemetry_rollup"
    __table_args__ = (UniqueConstraint("device_id", "bucket", name="uq_rollup_bucket"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[float] = mapped_column(Float)  # start of the hour
    samples: Mapped[int] = mapped_column(Integer)
    count: Mapped[int | None] = mapped_column(BigInteger)  # sums of 32-bit counts over the hour
    errors: Mapped[int | None] = mapped_column(BigInteger)
    p95_ms: Mapped[float | None] = mapped_column(Float)  # mean of the p95s in the hour
    p95_max_ms: Mapped[float | None] = mapped_column(Float)
    cpu_pct: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[int | None] = mapped_column(Integer)


class LatencyHistRow(Base):
    """One telemetry message's latency histogram (``inference.latency_hist``): counts on the contract's buckets
    (``agent/latency.py``) as one run from bucket ``i0``. Messages without latencies store no row."""

    __tablename__ = "latency_hist"
    __table_args__ = (
        UniqueConstraint("device_id", "epoch", "seq", name="uq_latency_hist_epoch_seq"),
        Index("ix_latency_hist_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)  # the telemetry row's (received_at when the device's was out of range)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)  # sum of counts
    i0: Mapped[int] = mapped_column(Integer)  # bucket of counts[0]
    counts: Mapped[list[int]] = mapped_column(JSON)


class LatencyHistHourly(Base):
    """Per device, hour and model version: the merged histograms of raw rows older than
    ``telemetry.downsample_after_hours`` (exact: merging adds counts). ``model_name`` '' and ``model_version``
    -1 stand for unknown (a unique key cannot hold NULLs)."""

    __tablename__ = "latency_hist_hourly"
    __table_args__ = (
        UniqueConstraint("device_id", "hour", "model_name", "model_version", name="uq_latency_hist_hourly"),
        Index("ix_latency_hist_hourly_hour", "hour"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    hour: Mapped[float] = mapped_column(Float)  # start of the hour
    model_name: Mapped[str] = mapped_column(String(128), default="")
    model_version: Mapped[int] = mapped_column(Integer, default=-1)
    count: Mapped[int] = mapped_column(BigInteger)
    i0: Mapped[int] = mapped_column(Integer)
    counts: Mapped[list[int]] = mapped_column(JSON)


class LatencyMinute(Base):
    """The fleet's latencies per minute, model version and device class, one row per contract bucket ``k``:
    what the ingest writer stored, added up as it goes (``n = n + excluded.n``), so fleet, version and class
    percentiles read a few thousand rows however many devices report. '' and -1 stand for unknown."""

    __tablename__ = "latency_minute"

    minute: Mapped[float] = mapped_column(Float, primary_key=True)  # start of the minute of the message's ts
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_class: Mapped[str] = mapped_column(String(64), primary_key=True)
    k: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class DeviceEvent(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("device_id", "epoch", "seq", name="uq_event_epoch_seq"),
        Index("ix_events_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)
    ts_replaced: Mapped[bool] = mapped_column(Boolean, default=False)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class EnrollmentToken(Base):
    """A one-time token the operator made for one device id: enrolls (or re-enrolls) it once, no approval."""

    __tablename__ = "enrollment_tokens"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Delta(Base):
    """A patch from one stored artifact to another: ``bsdiff4`` (bytes) or ``tensor`` (agent/ota/tensordelta.py)."""

    __tablename__ = "deltas"

    from_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    to_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), primary_key=True, default="bsdiff4")
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # what a tensor delta holds (DeltaStats)


class Counter(Base):
    """Named counters; ``registry`` grows whenever a variant or delta appears, so cached manifests refresh."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """Which replica runs a singleton loop, until when (the database's clock): server/leases.py."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)
    acquired_at: Mapped[float] = mapped_column(Float)


class Sample(Base):
    """A ground-truth sample a device uploaded when asked (downscaled JPEG in the artifact store)."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_model", "model_name", "model_version"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    device_class: Mapped[str | None] = mapped_column(String(64))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_bytes: Mapped[int | None] = mapped_column(BigInteger)  # for the size cap of garbage collection
    label: Mapped[Any] = mapped_column(JSON)  # class index or label name
    labelled_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)

"""Ground-truth samples a device uploads: only after an ``upload_samples`` command, within its allowance,
validated whole before anything is stored.

An ``upload_samples`` command grants the device ``samples.per_command`` samples (or the command's smaller
``limit``) for ``samples.window_s``; every stored sample uses one. An upload is checked entirely — each
record against ``SampleRecord`` (types and bounds that fit the database), each JPEG decoded — before the
first image is written, so a refused upload leaves no file behind.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import update
from sqlalchemy.orm import Session

from edgefleet.server.config import SamplesSection
from edgefleet.server.db.models import Device, Sample
from edgefleet.server.storage import ArtifactStore

MAX_SAMPLES_PER_POST = 50
MAX_JPEG_BYTES = 512 * 1024
MAX_RECORD_BYTES = 8 * 1024
SAMPLE_ID = r"^[0-9]{13}-[0-9a-f]{8}$"
INT64_MAX = 2**63 - 1


class Refused(Exception):
    """The device may not upload now (no command, window closed, allowance used): 403/429."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SampleModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str | None = Field(default=None, max_length=128)
    version: int | None = Field(default=None, ge=0, le=INT64_MAX)


class SampleRecord(BaseModel):
    """What the agent's sample store writes (agent/quality/samples.py); other keys are kept, within the size."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, protected_namespaces=())
    id: str = Field(pattern=SAMPLE_ID)
    ts: float | None = Field(default=None, ge=0, le=1e11)
    model: SampleModelRef | None = None
    device_class: str | None = Field(default=None, max_length=64)
    task: str | None = Field(default=None, max_length=32)
    shape: list[int] | None = Field(default=None, max_length=4)
    prediction: Any = None

    @model_validator(mode="after")
    def _bounded(self) -> SampleRecord:
        size = len(json.dumps(self.model_dump(mode="json"), separators=(",", ":")))
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"record is {size} bytes of JSON, over {MAX_RECORD_BYTES}")
        return self


class UploadedSample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record: SampleRecord
    jpeg_b64: str = Field(max_length=MAX_JPEG_BYTES * 4 // 3 + 8)


class SamplesUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: list[UploadedSample] = Field(max_length=MAX_SAMPLES_PER_POST)


@dataclass(frozen=True)
class Checked:
    record: SampleRecord
    jpeg: bytes


def grant(session: Session, *, device_id: str, args: dict[str, Any], section: SamplesSection,
          now: float) -> int:
    """An ``upload_samples`` command is being sent: allow the device that many samples for a while."""
    limit = args.get("limit")
    allowed = min(limit, section.per_command) if isinstance(limit, int) and limit > 0 else section.per_command
    session.execute(update(Device).where(Device.id == device_id)
                    .values(samples_allowed=allowed, samples_until=now + section.window_s))
    return allowed


def check(device: Device, upload: SamplesUpload, *, now: float) -> list[Checked]:
    """Every sample decoded and judged; raises ValueError (422) or Refused (403/429) before anything is kept."""
    if device.samples_until is None or now >= device.samples_until or device.samples_allowed <= 0:
        if device.samples_until is None:
            raise Refused(403, f"no upload_samples command was sent to device {device.id}")
        raise Refused(403 if now >= device.samples_until else 429,
                      f"device {device.id} has no samples left to upload from its last upload_samples command")
    if len(upload.samples) > device.samples_allowed:
        raise Refused(429, f"{len(upload.samples)} samples sent; device {device.id} may send "
                           f"{device.samples_allowed} more")
    checked: list[Checked] = []
    for item in upload.samples:
        sample_id = item.record.id
        try:
            jpeg = base64.b64decode(item.jpeg_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"sample {sample_id}: jpeg_b64 is not base64") from exc
        if not jpeg.startswith(b"\xff\xd8") or len(jpeg) > MAX_JPEG_BYTES:
            raise ValueError(f"sample {sample_id}: not a JPEG of at most {MAX_JPEG_BYTES} bytes")
        checked.append(Checked(item.record, jpeg))
    return checked


def take(session: Session, device: Device, count: int, *, now: float) -> None:
    """Use ``count`` of the allowance, atomically (two concurrent uploads cannot both spend the same)."""
    taken = session.execute(update(Device).where(Device.id == device.id, Device.samples_allowed >= count,
                                                 Device.samples_until > now)
                            .values(samples_allowed=Device.samples_allowed - count)).rowcount  # type: ignore[attr-defined]
    if taken != 1:
        raise Refused(429, f"device {device.id} may not send {count} more samples now")


def keep(session: Session, store: ArtifactStore, device: Device, samples: list[Checked], *, now: float,
         written: list[str]) -> int:
    """Store the images and rows (the allowance already taken); ``written`` gets each image's sha256 as it is
    stored, for clean-up when the transaction fails."""
    for sample in samples:
        sha, size = store.put_stream(io.BytesIO(sample.jpeg), limit=MAX_JPEG_BYTES)
        written.append(sha)
        record = sample.record
        row = session.get(Sample, (device.id, record.id))
        if row is None:
            row = Sample(device_id=device.id, id=record.id, created_at=now, label=None)
            session.add(row)
        row.model_name = record.model.name if record.model else None
        row.model_version = record.model.version if record.model else None
        row.device_class = record.device_class or device.device_class
        row.record, row.image_sha256, row.image_bytes = record.model_dump(mode="json"), sha, size
    return len(samples)

"""Model quality routes: drift per model version and fleet-wide, reference profiles, ground-truth
samples (devices upload them only when the operator asks), labels and accuracy."""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from agent.quality import accuracy_by, summarize_fleet
from server.api.deps import DB_ID_MAX, AdminDep, Credentials, DeviceIdPath, SessionDep, StateDep, require_device
from server.api.routes.models import ModelName, VersionNo
from server.crud import fleet
from server.crud import registry as registry_crud
from server.db.models import Device, Sample
from server.quality import device_drift, profile_summary, version_drift

router = APIRouter(tags=["quality"])
MAX_SAMPLES_PER_POST = 50
MAX_JPEG_BYTES = 512 * 1024
SAMPLE_ID = r"^[0-9]{13}-[0-9a-f]{8}$"


class UploadedSample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record: dict[str, Any]
    jpeg_b64: str = Field(max_length=MAX_JPEG_BYTES * 4 // 3 + 8)


class SamplesUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: list[UploadedSample] = Field(max_length=MAX_SAMPLES_PER_POST)


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str
    id: str = Field(pattern=SAMPLE_ID)
    label: int | str | None  # class index or label name; null clears it


class LabelsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(min_length=1, max_length=10_000)


@router.get("/v1/models/{name}/versions/{version}/drift", dependencies=[AdminDep])
def drift_of_version(name: ModelName, version: VersionNo, session: SessionDep,
                     threshold: Annotated[float | None, Query(gt=0)] = None) -> dict[str, Any]:
    _, row = registry_crud.get_version(session, name=name, version=version)
    ids = list(session.scalars(select(Device.id)))
    doc = version_drift(fleet.latest_drift(session, device_ids=ids), model=name, version=version, threshold=threshold)
    doc["profile"] = profile_summary(row.drift_profile, row.drift_profile_source)
    return doc


@router.get("/v1/models/{name}/versions/{version}/profile", dependencies=[AdminDep])
def profile_of_version(name: ModelName, version: VersionNo, session: SessionDep) -> dict[str, Any]:
    _, row = registry_crud.get_version(session, name=name, version=version)
    if row.drift_profile is None:
        raise HTTPException(404, f"model {name} v{version} has no drift profile")
    return {"source": row.drift_profile_source, "profile": row.drift_profile}


@router.get("/v1/drift", dependencies=[AdminDep])
def fleet_drift(session: SessionDep, threshold: Annotated[float | None, Query(gt=0)] = None) -> dict[str, Any]:
    ids = list(session.scalars(select(Device.id)))
    latest = fleet.latest_drift(session, device_ids=ids)
    summary = summarize_fleet(latest, threshold)
    summary["devices"] = {device: device_drift(section) for device, section in sorted(latest.items())}
    return summary


@router.post("/v1/devices/{device_id}/samples", status_code=200)
def upload_samples(device_id: DeviceIdPath, body: SamplesUpload, state: StateDep, session: SessionDep,
                   credentials: Credentials) -> dict[str, Any]:
    device = require_device(device_id, session, credentials)
    stored = 0
    now = time.time()
    for item in body.samples:
        record = item.record
        sample_id = str(record.get("id") or "")
        if not _valid_id(sample_id):
            raise HTTPException(422, f"sample id {sample_id[:40]!r} is not <13 digits>-<8 hex>")
        try:
            jpeg = base64.b64decode(item.jpeg_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(422, f"sample {sample_id}: jpeg_b64 is not base64") from exc
        if not jpeg.startswith(b"\xff\xd8") or len(jpeg) > MAX_JPEG_BYTES:
            raise HTTPException(422, f"sample {sample_id}: not a JPEG of at most {MAX_JPEG_BYTES} bytes")
        sha, _ = state.store.put_stream(io.BytesIO(jpeg), limit=MAX_JPEG_BYTES)
        found = record.get("model")
        model: dict[str, Any] = found if isinstance(found, dict) else {}
        row = session.get(Sample, (device.id, sample_id))
        if row is None:
            row = Sample(device_id=device.id, id=sample_id, created_at=now, label=None)
            session.add(row)
        row.model_name = str(model.get("name")) if model.get("name") is not None else None
        row.model_version = model.get("version") if isinstance(model.get("version"), int) else None
        row.device_class = record.get("device_class") or device.device_class
        row.record, row.image_sha256 = record, sha
        stored += 1
    return {"stored": stored}


def _valid_id(sample_id: str) -> bool:
    return re.fullmatch(SAMPLE_ID, sample_id) is not None


def _sample_public(row: Sample) -> dict[str, Any]:
    return {"device_id": row.device_id, "id": row.id, "model": row.model_name, "version": row.model_version,
            "device_class": row.device_class, "prediction": row.record.get("prediction"),
            "ts": row.record.get("ts"), "label": row.label, "labelled_at": row.labelled_at}


@router.get("/v1/samples", dependencies=[AdminDep])
def list_samples(session: SessionDep, model: str | None = None,
                 version: Annotated[int | None, Query(ge=0, le=DB_ID_MAX)] = None,
                 device_id: str | None = None, unlabeled: bool = False,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> dict[str, Any]:
    query = select(Sample).order_by(Sample.id).limit(limit)
    if model is not None:
        query = query.where(Sample.model_name == model)
    if version is not None:
        query = query.where(Sample.model_version == version)
    if device_id is not None:
        query = query.where(Sample.device_id == device_id)
    if unlabeled:
        query = query.where(Sample.labelled_at.is_(None))
    return {"samples": [_sample_public(row) for row in session.scalars(query)]}


@router.get("/v1/samples/{device_id}/{sample_id}/image", dependencies=[AdminDep])
def sample_image(device_id: DeviceIdPath, sample_id: str, state: StateDep, session: SessionDep) -> Response:
    row = session.get(Sample, (device_id, sample_id))
    if row is None or row.image_sha256 is None:
        raise HTTPException(404, f"no sample {sample_id} from {device_id}")
    with state.store.open(row.image_sha256) as handle:
        return Response(content=handle.read(), media_type="image/jpeg")


@router.post("/v1/samples/labels", dependencies=[AdminDep])
def label_samples(body: LabelsBody, session: SessionDep) -> dict[str, Any]:
    rows = []
    for item in body.labels:
        row = session.get(Sample, (item.device_id, item.id))
        if row is None:
            raise HTTPException(404, f"no sample {item.id} from {item.device_id}: nothing was labelled")
        rows.append((row, item.label))
    now = time.time()
    for row, label in rows:
        row.label, row.labelled_at = label, (now if label is not None else None)
    return {"labelled": sum(label is not None for _, label in rows), "cleared": sum(label is None for _, label in rows)}


@router.get("/v1/quality/accuracy", dependencies=[AdminDep])
def accuracy(session: SessionDep, model: str | None = None) -> dict[str, Any]:
    """Served predictions against operator labels, per model version and device class."""
    query = select(Sample).where(Sample.labelled_at.is_not(None))
    if model is not None:
        query = query.where(Sample.model_name == model)
    labels: dict[str, Any] = {}
    records = []
    for row in session.scalars(query):
        key = f"{row.device_id}/{row.id}"
        labels[key] = row.label
        records.append({**row.record, "id": key, "device_class": row.device_class,
                        "model": {"name": row.model_name, "version": row.model_version}})
    return {"model": model, **accuracy_by(labels, records)}

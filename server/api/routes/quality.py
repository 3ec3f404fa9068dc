"""Model quality routes: drift per model version and fleet-wide, reference profiles, ground-truth
samples (devices upload them only when the operator asks), labels and accuracy."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edgefleet.agent.quality import accuracy_by, summarize_fleet
from edgefleet.server import samples
from edgefleet.server.api.deps import DB_ID_MAX, AdminDep, DeviceDep, DeviceIdPath, SessionDep, StateDep
from edgefleet.server.api.errors import BODY_ERRORS, problems
from edgefleet.server.api.public.quality import (
    Accuracy,
    FleetDrift,
    Labelled,
    ProfileDoc,
    SampleList,
    SamplesStored,
    VersionDrift,
)
from edgefleet.server.api.routes.models import ModelName, VersionNo
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.crud import fleet
from edgefleet.server.crud import registry as registry_crud
from edgefleet.server.db.models import Device, Sample
from edgefleet.server.housekeeping import unreferenced
from edgefleet.server.quality import device_drift, profile_summary, version_drift
from edgefleet.server.samples import SAMPLE_ID, SamplesUpload

router = APIRouter(tags=["quality"], route_class=ContractRoute)
READ_ERRORS = (401, 403, 404, 422)


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str
    id: str = Field(pattern=SAMPLE_ID)
    label: int | str | None  # class index or label name; null clears it


class LabelsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(min_length=1, max_length=10_000)


@router.get("/v1/models/{name}/versions/{version}/drift", dependencies=[AdminDep], operation_id="quality.version_drift",
            response_model=VersionDrift, responses=problems(*READ_ERRORS))
def drift_of_version(name: ModelName, version: VersionNo, session: SessionDep,
                     threshold: Annotated[float | None, Query(gt=0)] = None) -> dict[str, Any]:
    _, row = registry_crud.get_version(session, name=name, version=version)
    ids = list(session.scalars(select(Device.id)))
    doc = version_drift(fleet.latest_drift(session, device_ids=ids), model=name, version=version, threshold=threshold)
    doc["profile"] = profile_summary(row.drift_profile, row.drift_profile_source)
    return doc


@router.get("/v1/models/{name}/versions/{version}/profile", dependencies=[AdminDep],
            operation_id="quality.version_profile", response_model=ProfileDoc,
            responses=problems(*READ_ERRORS, s404="no such version, or it has no drift profile"))
def profile_of_version(name: ModelName, version: VersionNo, session: SessionDep) -> dict[str, Any]:
    _, row = registry_crud.get_version(session, name=name, version=version)
    if row.drift_profile is None:
        raise HTTPException(404, f"model {name} v{version} has no drift profile")
    return {"source": row.drift_profile_source, "profile": row.drift_profile}


@router.get("/v1/drift", dependencies=[AdminDep], operation_id="quality.fleet_drift", response_model=FleetDrift,
            responses=problems(401, 403, 422))
def fleet_drift(session: SessionDep, threshold: Annotated[float | None, Query(gt=0)] = None) -> dict[str, Any]:
    ids = list(session.scalars(select(Device.id)))
    latest = fleet.latest_drift(session, device_ids=ids)
    summary = summarize_fleet(latest, threshold)
    summary["devices"] = {device: device_drift(section) for device, section in sorted(latest.items())}
    return summary


@router.post("/v1/devices/{device_id}/samples", status_code=200, operation_id="samples.upload",
             response_model=SamplesStored, responses=problems(
                 401, 403, *BODY_ERRORS, 429, s403="another device's token, or no upload_samples command was sent to "
                 "this device", s429="over the samples the command allowed"))
def upload_samples(device: DeviceDep, body: SamplesUpload, state: StateDep) -> dict[str, Any]:
    """Samples the operator asked for (an upload_samples command), validated whole before any is stored."""
    now = time.time()
    written: list[str] = []
    try:
        checked = samples.check(device, body, now=now)
        with state.db.session() as session:
            samples.take(session, device, len(checked), now=now)
            stored = samples.keep(session, state.store, device, checked, now=now, written=written)
    except samples.Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    except Exception:
        with state.db.session() as session:  # the rows did not commit: their new images go too
            for sha in unreferenced(session, set(written)):
                state.store.delete(sha)
        raise
    return {"stored": stored}


def _sample_public(row: Sample) -> dict[str, Any]:
    return {"device_id": row.device_id, "id": row.id, "model": row.model_name, "version": row.model_version,
            "device_class": row.device_class, "prediction": row.record.get("prediction"),
            "ts": row.record.get("ts"), "label": row.label, "labelled_at": row.labelled_at}


@router.get("/v1/samples", dependencies=[AdminDep], operation_id="samples.list", response_model=SampleList,
            responses=problems(401, 403, 422))
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


@router.get("/v1/samples/{device_id}/{sample_id}/image", dependencies=[AdminDep], operation_id="samples.image",
            response_class=Response, responses={
                200: {"description": "the sample's JPEG", "content": {"image/jpeg": {
                    "schema": {"type": "string", "format": "binary"}}}}, **problems(*READ_ERRORS)})
def sample_image(device_id: DeviceIdPath, sample_id: str, state: StateDep, session: SessionDep) -> Response:
    row = session.get(Sample, (device_id, sample_id))
    if row is None or row.image_sha256 is None:
        raise HTTPException(404, f"no sample {sample_id} from {device_id}")
    with state.store.open(row.image_sha256) as handle:
        return Response(content=handle.read(), media_type="image/jpeg")


@router.post("/v1/samples/labels", dependencies=[AdminDep], operation_id="samples.label", response_model=Labelled,
            responses=problems(*READ_ERRORS, *BODY_ERRORS, s404="a sample is not known: nothing was labelled"))
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


@router.get("/v1/quality/accuracy", dependencies=[AdminDep], operation_id="quality.accuracy", response_model=Accuracy,
            responses=problems(401, 403, 422))
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

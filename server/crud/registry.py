"""Models, versions and variants."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.server.crud import NotFound
from edgefleet.server.crud.counters import bump
from edgefleet.server.db.models import Model, ModelVersion, Variant
from edgefleet.server.quality import profile_summary


def get_model(session: Session, *, name: str) -> Model:
    model = session.scalars(select(Model).where(Model.name == name)).first()
    if model is None:
        raise NotFound(f"model {name} is not known")
    return model


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.name)))


def list_versions(session: Session, *, model_id: int) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.version)
    return list(session.scalars(query))


def get_version(session: Session, *, name: str, version: int) -> tuple[Model, ModelVersion]:
    model = get_model(session, name=name)
    row = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                     ModelVersion.version == version)).first()
    if row is None:
        raise NotFound(f"model {name} has no version {version}")
    return model, row


def version_by_id(session: Session, *, version_id: int) -> tuple[Model, ModelVersion]:
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFound(f"model version id {version_id} is not known")
    model = session.get(Model, row.model_id)
    assert model is not None
    return model, row


def version_with_sha256(session: Session, *, name: str, sha256: str) -> int | None:
    """The newest version of model ``name`` whose file is ``sha256``, if any."""
    found = session.scalar(select(func.max(ModelVersion.version)).join(Model, Model.id == ModelVersion.model_id)
                           .where(Model.name == name, ModelVersion.sha256 == sha256))
    return int(found) if found is not None else None


def create_version(session: Session, *, name: str, sha256: str, size: int, fmt: str, task: str,
                   inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], labels: list[str] | None,
                   preprocess: dict[str, Any] | None, runtime_hints: dict[str, Any] | None,
                   calibration_sha256: str | None, now: float | None = None) -> tuple[Model, ModelVersion]:
    """Add the next version of ``name`` (creating the model) with its reference variant."""
    now = now if now is not None else time.time()
    model = session.scalars(select(Model).where(Model.name == name).with_for_update()).first()
    if model is None:
        model = Model(name=name, task=task, created_at=now)
        session.add(model)
        session.flush()
    else:
        model.task = task
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    row = ModelVersion(model_id=model.id, version=(latest or 0) + 1, sha256=sha256, size=size, format=fmt,
                       task=task, inputs=inputs, outputs=outputs, labels=labels, preprocess=preprocess,
                       runtime_hints=runtime_hints, calibration_sha256=calibration_sha256, created_at=now)
    session.add(row)
    session.flush()
    session.add(Variant(version_id=row.id, name="reference", device_classes=["*"], sha256=sha256, size=size,
                        format=fmt, status="ready", report={"reason": "the uploaded file"}, created_at=now))
    session.flush()
    return model, row


def list_variants(session: Session, *, version_id: int) -> list[Variant]:
    query = select(Variant).where(Variant.version_id == version_id).order_by(Variant.id)
    return list(session.scalars(query))


def set_building(session: Session, *, version_id: int, names: list[str], target: str, job_id: int,
                 now: float | None = None) -> None:
    """Placeholder rows (status building) for the variants a job is expected to make."""
    now = now if now is not None else time.time()
    existing = {v.name: v for v in list_variants(session, version_id=version_id)}
    for name in names:
        if name == "reference":
            continue
        row = existing.get(name)
        if row is None:
            row = Variant(version_id=version_id, name=name, created_at=now)
            session.add(row)
        row.status, row.device_classes, row.job_id, row.report = "building", [target], job_id, {}
        row.sha256 = row.size = row.format = None


def publish_variants(session: Session, *, version_id: int, target: str, job_id: int,
                     results: list[dict[str, Any]], now: float | None = None) -> list[Variant]:
    """In one transaction: replace the job's placeholders by its results (each dict: name, status
    ready|failed, sha256, size, format, report)."""
    now = now if now is not None else time.time()
    rows = {v.name: v for v in list_variants(session, version_id=version_id)}
    published = []
    for result in results:
        row = rows.get(result["name"])
        if row is None:
            row = Variant(version_id=version_id, name=result["name"], created_at=now)
            session.add(row)
            rows[row.name] = row
        classes = set(row.device_classes or []) | {target}
        row.device_classes = sorted(classes)
        row.status, row.job_id = result["status"], job_id
        row.sha256, row.size, row.format = result.get("sha256"), result.get("size"), result.get("format")
        row.report = result.get("report") or {}
        published.append(row)
    done = {r["name"] for r in results}
    for row in rows.values():
        if row.status == "building" and row.job_id == job_id and row.name not in done:
            row.status, row.report = "failed", {"reason": "the variant pipeline did not produce it"}
    bump(session)
    session.flush()
    return published


def fail_building(session: Session, *, job_id: int, reason: str) -> None:
    for row in session.scalars(select(Variant).where(Variant.job_id == job_id, Variant.status == "building")):
        row.status, row.report = "failed", {"reason": reason}


def model_public(model: Model, versions: list[ModelVersion] | None = None) -> dict[str, Any]:
    latest = versions[-1] if versions else None
    doc: dict[str, Any] = {"name": model.name, "task": model.task, "created_at": model.created_at,
                           "latest_version": latest.version if latest else None,
                           "format": latest.format if latest else None}
    if versions is not None:
        doc["versions"] = [version_public(model, v) for v in versions]
    return doc


def version_public(model: Model, row: ModelVersion, variants: list[Variant] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": model.name, "version": row.version, "sha256": row.sha256, "size": row.size,
        "format": row.format, "task": row.task, "inputs": row.inputs, "outputs": row.outputs,
        "labels": row.labels, "preprocess": row.preprocess, "runtime": row.runtime_hints,
        "calibration_sha256": row.calibration_sha256, "created_at": row.created_at,
        "drift_profile": profile_summary(row.drift_profile, row.drift_profile_source),
    }
    if variants is not None:
        doc["variants"] = [variant_public(v) for v in variants]
    return doc


def variant_public(row: Variant) -> dict[str, Any]:
    return {"name": row.name, "status": row.status, "format": row.format, "sha256": row.sha256,
            "size": row.size, "device_classes": row.device_classes, "report": row.report,
            "job_id": row.job_id, "created_at": row.created_at}

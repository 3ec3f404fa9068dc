"""The model registry: upload versions (streamed, size-limited, format from content), list, variants."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edgefleet.agent.wire import PreprocessSpec, RuntimeHints
from edgefleet.server import sandbox
from edgefleet.server.api.deps import MODEL_NAME, AdminDep, SessionDep, StateDep
from edgefleet.server.api.errors import BODY_ERRORS, problems
from edgefleet.server.api.public.registry import ModelList, ModelPublic, VariantList, VersionDetail, VersionUploaded
from edgefleet.server.api.public.service import JobPublic
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.api.schemas import UploadMeta, VariantsRequest
from edgefleet.server.crud import jobs as job_crud
from edgefleet.server.crud import registry as crud
from edgefleet.server.deltas import version_deltas
from edgefleet.server.sandbox import Limits, SandboxError
from edgefleet.server.state import ServerState
from edgefleet.server.storage import TooLarge, copy_limited, hash_file
from edgefleet.server.variants import start_variants_job

router = APIRouter(tags=["models"], dependencies=[AdminDep], route_class=ContractRoute)
READ_ERRORS = (401, 403, 404, 422)
ModelName = Annotated[str, PathParam(pattern=MODEL_NAME)]
VersionNo = Annotated[int, PathParam(ge=1)]

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the model file"},
        "labels": {"type": "string", "description": "labels, one per line"},
        "meta": {"type": "string", "description": "JSON: task, preprocess, runtime"},
        "calibration": {"type": "string", "format": "binary", "description": ".npz of sample inputs"},
        "force": {"type": "string", "enum": ["true", "false"],
                  "description": "make a new version even when one of this model is the same file (else 409)"}}}}}}}


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(f"upload is larger than the limit of {limit} bytes")
        yield chunk


async def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raw = await value.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPException(422, f"{value.filename or 'field'} is not UTF-8 text") from exc
    return str(value)


def _parse_meta(raw: str | None) -> UploadMeta:
    if not raw:
        return UploadMeta()
    try:
        meta = UploadMeta.model_validate(json.loads(raw))
        if meta.preprocess is not None:
            meta.preprocess = PreprocessSpec.model_validate(meta.preprocess).model_dump(mode="json",
                                                                                        exclude_none=True)
        if meta.runtime is not None:
            meta.runtime = RuntimeHints.model_validate(meta.runtime).model_dump(mode="json")
    except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(str(p) for p in first["loc"]) if first else ""
        message = f"{where}: {first['msg']}" if first else str(exc)
        raise HTTPException(422, f"meta is not valid: {message}") from exc
    return meta


def _refuse_same_file(state: ServerState, name: str, path: Path) -> None:
    """409 when ``name`` already has a version of exactly this file (pushing it again is usually a mistake)."""
    sha256, _size = hash_file(path)
    with state.db.session() as session:
        same = crud.version_with_sha256(session, name=name, sha256=sha256)
    if same is not None:
        raise HTTPException(409, f"model {name} version {same} is already this file (sha256 {sha256[:12]}); "
                                 "send force=true (edgefleet model push --force) for a new version anyway")
def _inspect(state: ServerState, path: Path, *, name: str, meta: UploadMeta, calibration: Path | None
             ) -> dict[str, Any]:
    """Format, signature and drift profile, found in a bounded child process (server/sandbox.py)."""
    limits = Limits(timeout_s=state.config.sandbox.inspect_timeout_s, cpu_s=state.config.sandbox.inspect_timeout_s,
                    memory_mb=state.config.sandbox.memory_mb)
    try:
        return sandbox.run("inspect", {"path": str(path), "task": meta.task, "preprocess": meta.preprocess,
                                       "calibration": str(calibration) if calibration else None, "name": name},
                           limits)
    except SandboxError as exc:
        if exc.detail == "not_a_model":
            raise HTTPException(422, f"not a model: {exc}") from exc
        if exc.detail == "bad_calibration":  # the arrays do not fit the model's inputs (server/calibration.py)
            raise HTTPException(422, str(exc)) from exc
        if exc.kind == "shutdown":
            raise HTTPException(503, "the server is shutting down; upload the model again",
                                headers={"Retry-After": "10"}) from exc
        if exc.kind == "refused":
            raise HTTPException(422, f"model refused: {exc}") from exc
        raise HTTPException(422, f"model refused: loading and running it once {exc}") from exc


def _store_version(state: ServerState, name: str, upload: UploadFile, labels: list[str] | None, meta: UploadMeta,
                   calibration: UploadFile | None, limit: int, force: bool = False) -> dict[str, Any]:
    scratch = state.store.scratch_dir()
    fd, tmp_name = tempfile.mkstemp(dir=scratch, prefix="model-")
    tmp = Path(tmp_name)
    cal_tmp: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            copy_limited(upload.file, out, limit)
        if tmp.stat().st_size == 0:
            raise HTTPException(422, "the uploaded file is empty")
        cal_sha = None
        if calibration is not None:
            fd2, cal_name = tempfile.mkstemp(dir=scratch, prefix="cal-")
            cal_tmp = Path(cal_name)
            with os.fdopen(fd2, "wb") as out:
                calibration.file.seek(0)
                copy_limited(calibration.file, out, limit)
            try:
                with np.load(cal_tmp, allow_pickle=False) as data:  # the zip directory only: no array is read here
                    if not data.files:
                        raise ValueError("it holds no arrays")
            except (ValueError, OSError) as exc:
                raise HTTPException(422, f"calibration is not a .npz of arrays: {exc}") from exc
        if not force:
            _refuse_same_file(state, name, tmp)
        checked = _inspect(state, tmp, name=name, meta=meta, calibration=cal_tmp)
        profile, source, note = checked["profile"], checked["source"], checked["note"]
        if cal_tmp is not None:
            cal_sha, _ = state.store.put_file(cal_tmp)
        sha256, size = state.store.put_file(tmp)
        with state.db.session() as session:
            model, row = crud.create_version(
                session, name=name, sha256=sha256, size=size, fmt=checked["format"], task=meta.task,
                inputs=checked["inputs"], outputs=checked["outputs"], labels=labels, preprocess=meta.preprocess,
                runtime_hints=meta.runtime, calibration_sha256=cal_sha)
            if profile is not None:
                profile["version"] = row.version
            row.drift_profile, row.drift_profile_source = profile, source
            doc = crud.version_public(model, row, crud.list_variants(session, version_id=row.id))
            if note:
                doc["drift_profile_note"] = note
            return doc
    finally:
        tmp.unlink(missing_ok=True)
        if cal_tmp is not None:
            cal_tmp.unlink(missing_ok=True)


@router.post("/v1/models/{name}/versions", status_code=201, openapi_extra=UPLOAD_BODY, operation_id="models.upload",
             response_model=VersionUploaded, responses=problems(
                 400, 401, 403, 409, 413, 415, 422, 503, s409="this model already has a version of this very file "
                 "(send force=true for a new one)", s503="the server is shutting down: upload again"))
async def upload_version(name: ModelName, request: Request, state: StateDep) -> dict[str, Any]:
    """A new version (previous + 1) of the model: multipart, streamed to storage within ``max_upload_mb``;
    format, signature and drift profile found in a bounded child process."""
    limit = int(state.config.max_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise HTTPException(413, f"upload of {declared} bytes is larger than the limit of {limit} bytes")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with a 'file' part")
    try:
        form = await MultiPartParser(request.headers, _limited(request, limit + 1024 * 1024), max_files=4,
                                     max_fields=8).parse()
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    except MultiPartException as exc:
        raise HTTPException(400, f"bad multipart body: {exc.message}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "the 'file' part (the model file) is missing")
        labels_text = await _text(form.get("labels"))
        labels = [line.strip() for line in labels_text.splitlines() if line.strip()] if labels_text else None
        meta = _parse_meta(await _text(form.get("meta")))
        calibration = form.get("calibration")
        if calibration is not None and not isinstance(calibration, UploadFile):
            raise HTTPException(422, "calibration must be a file part (.npz)")
        force = str(await _text(form.get("force")) or "").strip().lower() in ("1", "true", "yes")
        try:
            return await run_in_threadpool(_store_version, state, name, upload, labels, meta, calibration, limit,
                                           force)
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from exc
    finally:
        await form.close()


@router.get("/v1/models", operation_id="models.list", response_model=ModelList, responses=problems(401, 403))
def list_models(session: SessionDep) -> dict[str, Any]:
    return {"models": [crud.model_public(m, crud.list_versions(session, model_id=m.id)[-1:])
                       for m in crud.list_models(session)]}


@router.get("/v1/models/{name}", operation_id="models.get", response_model=ModelPublic,
            responses=problems(*READ_ERRORS))
def get_model(name: ModelName, session: SessionDep) -> dict[str, Any]:
    model = crud.get_model(session, name=name)
    return crud.model_public(model, crud.list_versions(session, model_id=model.id))


@router.get("/v1/models/{name}/versions/{version}", operation_id="models.get_version", response_model=VersionDetail,
            responses=problems(*READ_ERRORS))
def get_version(name: ModelName, version: VersionNo, session: SessionDep) -> dict[str, Any]:
    model, row = crud.get_version(session, name=name, version=version)
    return crud.version_public(model, row, crud.list_variants(session, version_id=row.id))


@router.get("/v1/models/{name}/versions/{version}/variants", operation_id="variants.list",
            response_model=VariantList, responses=problems(*READ_ERRORS))
def list_variants(name: ModelName, version: VersionNo, session: SessionDep) -> dict[str, Any]:
    _, row = crud.get_version(session, name=name, version=version)
    return {"model": name, "version": version,
            "variants": [crud.variant_public(v) for v in crud.list_variants(session, version_id=row.id)],
            "deltas": version_deltas(session, version_id=row.id)}


@router.post("/v1/models/{name}/versions/{version}/variants", status_code=202, operation_id="variants.create",
             response_model=JobPublic, responses=problems(*READ_ERRORS, *BODY_ERRORS))
def make_variants(name: ModelName, version: VersionNo, body: VariantsRequest, state: StateDep) -> dict[str, Any]:
    job_id = start_variants_job(db=state.db, runner=state.jobs, config=state.config, name=name, version=version,
                                target=body.target)
    with state.db.session() as session:
        return job_crud.job_public(job_crud.get_job(session, job_id=job_id))



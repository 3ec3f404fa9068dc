"""Device routes (manifest, reports) and the operator's view of devices (list, telemetry, commands)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from edgefleet.agent.wire import MANIFEST_MEDIA_TYPE, Command, UpdateReport
from edgefleet.server.api.deps import (
    AdminDep,
    Credentials,
    DeviceIdPath,
    SessionDep,
    StateDep,
    bearer_token,
    require_device,
)
from edgefleet.server.api.errors import BODY_ERRORS, problems
from edgefleet.server.api.public.devices import DeviceList, DeviceView, EventPage, SignedManifest, TelemetryPage
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.api.schemas import CommandBody
from edgefleet.server.crud import devices as crud
from edgefleet.server.crud import fleet
from edgefleet.server.crud import telemetry as telemetry_crud
from edgefleet.server.manifests import SignedBody
from edgefleet.server.offers import record_offer
from edgefleet.server.quality import device_drift
from edgefleet.server.samples import grant
from edgefleet.server.state import ServerState

router = APIRouter(tags=["devices"], route_class=ContractRoute)
MANIFEST_SCHEMA = {"$ref": "#/components/schemas/SignedManifest"}
ADMIN_ERRORS = (401, 403, 404, 422)
REPORT_TIMEOUT_S = 30.0


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.strip('"')
    return any(tag.strip().removeprefix("W/").strip('"') == bare for tag in header.split(","))


@router.get("/v1/devices/{device_id}/manifest", operation_id="devices.manifest", response_model=SignedManifest,
            responses={
                200: {"description": "the signed manifest of the device's desired state; ETag header",
                      "content": {MANIFEST_MEDIA_TYPE: {"schema": MANIFEST_SCHEMA}}},
                204: {"description": "no desired state"},
                304: {"description": "unchanged since If-None-Match"},
                **problems(401, 403, 406, 422, s403="the token of another device, or one waiting for approval")})
async def manifest(device_id: DeviceIdPath, state: StateDep, credentials: Credentials,
                   if_none_match: Annotated[str | None, Header()] = None,
                   accept: Annotated[str | None, Header()] = None) -> Response:
    """The device's desired state, signed. ``Accept: application/vnd.edgefleet.manifest.v2+json``: the RFC 8785
    form (``signatures``, ``root_version``); without it the legacy form (``signature``, ``key_id``), or 406 when
    the server has ``legacy_manifests: false``."""
    # the hot path: one hop to a worker thread, one short transaction (auth + desired state + signature)
    legacy = MANIFEST_MEDIA_TYPE not in (accept or "")
    token = credentials.credentials if credentials is not None else ""
    signed = state.manifests.cached(state.db.loop_engine, device_id=device_id, token=token, now=time.time(),
                                    legacy=legacy) if token else None
    if signed is None:
        found, signed = await run_in_threadpool(_checkin, state, device_id, token, legacy)
        if not found:
            await run_in_threadpool(_refuse, state, device_id, token)
    if signed is None:
        return Response(status_code=204)
    if legacy and not state.config.legacy_manifests:
        raise HTTPException(406, f"this server signs manifests only in the RFC 8785 form: send Accept: "
                                 f"{MANIFEST_MEDIA_TYPE}")
    headers = {"ETag": signed.etag, "Cache-Control": "no-cache", "Vary": "Accept"}
    if etag_matches(if_none_match, signed.etag):
        return Response(status_code=304, headers=headers)
    return Response(content=signed.body, media_type="application/json" if legacy else MANIFEST_MEDIA_TYPE,
                    headers=headers)


def _checkin(state: ServerState, device_id: str, token: str, legacy: bool) -> tuple[bool, SignedBody | None]:
    with state.db.session() as session:
        device = crud.device_for_token(session, device_id=device_id, token=token) if token else None
        if device is None:
            return False, None
        signed = state.manifests.signed(session, device=device, now=time.time(), legacy=legacy)
        record_offer(device, signed.body if signed is not None else None, state.offers)  # what it may download now
        return True, signed


def _refuse(state: ServerState, device_id: str, token: str) -> None:
    with state.db.session() as session:
        require_device(device_id, session, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
                       if token else None)


@router.post("/v1/devices/{device_id}/reports", status_code=204, operation_id="devices.report",
             response_class=Response, responses=problems(401, 403, *BODY_ERRORS, 503))
async def report(device_id: DeviceIdPath, body: UpdateReport, state: StateDep, credentials: Credentials) -> Response:
    # waits as a coroutine, not on an HTTP thread: server/reports.py commits queued reports together
    written = state.reports.submit(device_id, bearer_token(credentials), body)
    try:
        refused = await asyncio.wait_for(asyncio.wrap_future(written), REPORT_TIMEOUT_S)
    except TimeoutError as exc:
        raise HTTPException(503, "the report was not written in time; send it again", headers={"Retry-After": "5"}) \
            from exc
    except Exception as exc:
        raise HTTPException(503, f"the report was not written: {type(exc).__name__}",
                            headers={"Retry-After": "5"}) from exc
    if refused is not None:
        raise refused
    return Response(status_code=204)


@router.get("/v1/devices", dependencies=[AdminDep], operation_id="devices.list", response_model=DeviceList,
            responses=problems(401, 403, 422))
def list_devices(session: SessionDep, online: bool | None = None,
                 enrollment: Annotated[Literal["enrolled", "pending", "unenrolled"] | None, Query(
                     description="pending: waiting for the operator's approval")] = None) -> dict[str, Any]:
    devices = crud.list_devices(session, online=online, enrollment=enrollment)
    drift = fleet.latest_drift(session, device_ids=[d.id for d in devices])
    return {"devices": [{**crud.device_public(d), "drift": device_drift(drift.get(d.id))} for d in devices]}


@router.get("/v1/devices/{device_id}", dependencies=[AdminDep], operation_id="devices.get", response_model=DeviceView,
            responses=problems(*ADMIN_ERRORS))
def get_device(device_id: DeviceIdPath, session: SessionDep) -> dict[str, Any]:
    device = crud.get_device(session, device_id=device_id)
    drift = fleet.latest_drift(session, device_ids=[device.id])
    return {**crud.device_public(device), "drift": device_drift(drift.get(device.id))}


@router.get("/v1/devices/{device_id}/telemetry", dependencies=[AdminDep], operation_id="devices.telemetry",
            response_model=TelemetryPage, responses=problems(*ADMIN_ERRORS))
def telemetry(device_id: DeviceIdPath, session: SessionDep, state: StateDep,
              since: Annotated[float | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
              rollups: Annotated[bool, Query(description="include hourly downsampled rows")] = False,
              ) -> dict[str, Any]:
    crud.get_device(session, device_id=device_id)
    raw_since = time.time() - state.config.telemetry.downsample_after_hours * 3600
    doc: dict[str, Any] = {"device_id": device_id, "telemetry": [
        telemetry_crud.telemetry_public(r)
        for r in telemetry_crud.list_telemetry(session, device_id=device_id, since=since, limit=limit)],
        "epochs": telemetry_crud.epoch_summary(session, device_id=device_id, since=raw_since)}
    if rollups:
        doc["rollups"] = [telemetry_crud.rollup_public(r) for r in
                          telemetry_crud.list_rollups(session, device_id=device_id, limit=limit)]
    return doc


@router.get("/v1/devices/{device_id}/events", dependencies=[AdminDep], operation_id="devices.events",
            response_model=EventPage, responses=problems(*ADMIN_ERRORS))
def events(device_id: DeviceIdPath, session: SessionDep, since: Annotated[float | None, Query()] = None,
           limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
    crud.get_device(session, device_id=device_id)
    return {"device_id": device_id, "events": [
        telemetry_crud.event_public(r)
        for r in telemetry_crud.list_events(session, device_id=device_id, since=since, limit=limit)]}


@router.post("/v1/devices/{device_id}/commands", dependencies=[AdminDep], status_code=202,
             operation_id="devices.command", response_model=Command,
             responses=problems(*ADMIN_ERRORS, *BODY_ERRORS, 503,
                                s503="MQTT is off in the configuration or not connected"))
def command(device_id: DeviceIdPath, body: CommandBody, state: StateDep, session: SessionDep) -> dict[str, Any]:
    crud.get_device(session, device_id=device_id)
    if state.ingestor is None:
        raise HTTPException(503, "MQTT is disabled in this server's configuration")
    args = dict(body.args)
    if body.type == "upload_samples":  # the device may upload only now, as many as this grants (server/samples.py)
        with state.db.session() as grants:  # committed before the device can answer the command
            args["limit"] = grant(grants, device_id=device_id, args=args, section=state.config.samples,
                                  now=time.time())
    sent = Command(id=uuid.uuid4().hex, type=body.type, args=args)
    try:
        state.ingestor.publish_command(device_id, sent)
    except ConnectionError as exc:
        raise HTTPException(503, f"cannot publish the command: {exc}") from exc
    return sent.model_dump(mode="json")

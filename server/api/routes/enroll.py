"""Enrollment (device side) and the operator's hold on it: reset, approve, one-time tokens."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException

from edgefleet.agent.wire import EnrollRequest, EnrollResponse
from edgefleet.server.api.deps import AdminDep, Credentials, DeviceIdPath, StateDep
from edgefleet.server.api.errors import BODY_ERRORS, problems
from edgefleet.server.api.public.devices import DevicePublic, EnrollmentToken
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.api.schemas import EnrollmentTokenBody
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import enrollment
from edgefleet.server.crud.rollouts import join_rollouts
from edgefleet.server.rollouts import rollout_writes

router = APIRouter(tags=["devices"], route_class=ContractRoute)
ADMIN_ERRORS = (401, 403, 404, 422)


@router.post("/v1/enroll", operation_id="devices.enroll", response_model=EnrollResponse, responses=problems(
    401, 409, *BODY_ERRORS, s401="no valid enrollment credential",
    s409="the id is enrolled: re-enroll with its current device token, or after an operator reset"))
def enroll(body: EnrollRequest, state: StateDep, credentials: Credentials) -> EnrollResponse:
    """A new id enrolls with the shared token (then waits for approval in ``enrollment.mode: approve``) or a
    one-time token for it; an enrolled id re-enrolls with its current token (``Authorization: Bearer``),
    which rotates it."""
    now = time.time()
    bearer = credentials.credentials if credentials is not None else None
    with rollout_writes(state.db) as session:
        try:
            done = enrollment.enroll(session, device_id=body.device_id, credential=body.enrollment_token,
                                     bearer=bearer, shared_token=state.config.enrollment_token,
                                     mode=state.config.enrollment.mode, device_class=body.device_class,
                                     tags=body.tags, hw=body.hw, now=now)
        except enrollment.Refused as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        session.flush()
        if done.status == "enrolled":
            join_rollouts(session, device=done.device, now=now)
    return EnrollResponse(device_id=body.device_id, token=done.token, status=done.status)


@router.post("/v1/devices/{device_id}/reset", dependencies=[AdminDep], operation_id="devices.reset",
             response_model=DevicePublic, responses=problems(*ADMIN_ERRORS))
def reset(device_id: DeviceIdPath, state: StateDep) -> dict[str, Any]:
    """Revoke the device's token: the id may enroll again with the shared token (a replaced or re-imaged box)."""
    with rollout_writes(state.db) as session:
        return device_crud.device_public(enrollment.reset(session, device_id=device_id))


@router.post("/v1/devices/{device_id}/approve", dependencies=[AdminDep], operation_id="devices.approve",
             response_model=DevicePublic, responses=problems(*ADMIN_ERRORS, 409, s409="the device is not waiting"))
def approve(device_id: DeviceIdPath, state: StateDep) -> dict[str, Any]:
    """Let a device waiting for approval in: the token it holds becomes valid; it joins matching rollouts."""
    now = time.time()
    with rollout_writes(state.db) as session:
        device = enrollment.approve(session, device_id=device_id, now=now)
        session.flush()
        join_rollouts(session, device=device, now=now)
        return device_crud.device_public(device)


@router.post("/v1/devices/{device_id}/enrollment-token", dependencies=[AdminDep], status_code=201,
             operation_id="devices.enrollment_token", response_model=EnrollmentToken,
             responses=problems(401, 403, *BODY_ERRORS))
def enrollment_token(device_id: DeviceIdPath, state: StateDep,
                     body: EnrollmentTokenBody | None = None) -> dict[str, Any]:
    """A one-time token that enrolls (or re-enrolls) this id once, without approval."""
    ttl_h = body.ttl_h if body is not None and body.ttl_h is not None else state.config.enrollment.token_ttl_h
    with state.db.session() as session:
        token, expires_at = enrollment.create_token(session, device_id=device_id, ttl_s=ttl_h * 3600, now=time.time())
    return {"device_id": device_id, "enrollment_token": token, "expires_at": expires_at}

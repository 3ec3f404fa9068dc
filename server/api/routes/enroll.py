from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException

from agent.wire import EnrollRequest, EnrollResponse
from server.api.deps import SessionDep, StateDep
from server.crud import devices as crud

router = APIRouter(tags=["devices"])


@router.post("/v1/enroll", response_model=EnrollResponse)
def enroll(body: EnrollRequest, state: StateDep, session: SessionDep) -> EnrollResponse:
    expected = state.config.enrollment_token
    if not expected or not hmac.compare_digest(body.enrollment_token.encode(), expected.encode()):
        raise HTTPException(401, "invalid enrollment token")
    token = crud.enroll_device(session, device_id=body.device_id, device_class=body.device_class, tags=body.tags,
                               hw=body.hw)
    return EnrollResponse(device_id=body.device_id, token=token)

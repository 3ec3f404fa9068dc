from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, HTTPException

from agent.wire import EnrollRequest, EnrollResponse
from server.api.deps import StateDep
from server.crud import devices as crud
from server.crud.rollouts import join_rollouts
from server.rollouts import rollout_writes

router = APIRouter(tags=["devices"])


@router.post("/v1/enroll", response_model=EnrollResponse)
def enroll(body: EnrollRequest, state: StateDep) -> EnrollResponse:
    expected = state.config.enrollment_token
    if not expected or not hmac.compare_digest(body.enrollment_token.encode(), expected.encode()):
        raise HTTPException(401, "invalid enrollment token")
    with rollout_writes(state.db) as session:
        token = crud.enroll_device(session, device_id=body.device_id, device_class=body.device_class,
                                   tags=body.tags, hw=body.hw)
        session.flush()
        device = crud.get_device(session, device_id=body.device_id)
        join_rollouts(session, device=device, now=time.time())
    return EnrollResponse(device_id=body.device_id, token=token)

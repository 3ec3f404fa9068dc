from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path

from edgefleet.server import rollouts as engine
from edgefleet.server.api.deps import DB_ID_MAX, AdminDep, SessionDep, StateDep
from edgefleet.server.api.errors import BODY_ERRORS, problems
from edgefleet.server.api.public.rollouts import RolloutDetail, RolloutList, RolloutView
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.api.schemas import AbortBody, RolloutCreate
from edgefleet.server.crud import registry
from edgefleet.server.crud import rollouts as crud
from edgefleet.server.deltas import (
    INLINE_DELTA_BYTES,
    prepare_rollout_deltas,
    rollout_artifact_bytes,
    rollout_transfers,
)
from edgefleet.server.deltas import KIND as DELTAS_JOB
from edgefleet.server.state import ServerState

router = APIRouter(tags=["rollouts"], dependencies=[AdminDep], route_class=ContractRoute)
CONTROL_ERRORS = problems(401, 403, 404, 409, *BODY_ERRORS, s409="the rollout is not in a state this action applies to")
RolloutId = Annotated[int, Path(ge=1, le=DB_ID_MAX)]


@router.post("/v1/rollouts", status_code=201, operation_id="rollouts.create", response_model=RolloutDetail,
             responses=problems(401, 403, 404, 409, *BODY_ERRORS, s404="no such model version",
                                s422="the body is not valid, or the target matches no enrolled device"))
def create(body: RolloutCreate, state: StateDep) -> dict[str, Any]:
    """A rollout of a model version to the target's devices in gated waves; the first wave starts now."""
    with engine.rollout_writes(state.db) as session:
        _, version = registry.get_version(session, name=body.model, version=body.version)
        rollout = crud.create_rollout(
            session, version_id=version.id, target=body.target.model_dump(exclude_none=True),
            waves=body.waves_spec(), gates=body.gates.model_dump(), priority=body.priority,
            trial=body.trial.model_dump(mode="json") if body.trial else None,
            shadow=body.shadow.model_dump(mode="json") if body.shadow else None, auto_revert=body.auto_revert,
            push=body.push)
        rollout_id = rollout.id
    if rollout_artifact_bytes(state, rollout_id) <= INLINE_DELTA_BYTES:
        prepare_rollout_deltas(state.db, state.store, state.config, rollout_id, lambda _f, _m: None)
    else:  # big models: the first wave may start with full downloads while the patches are made
        state.jobs.submit(kind=DELTAS_JOB, params={"rollout_id": rollout_id})
    engine.step(state.db, rollout_id=rollout_id, now=time.time())  # the first wave starts now
    with state.db.session() as session:
        return crud.rollout_public(session, crud.get_rollout(session, rollout_id=rollout_id))


@router.get("/v1/rollouts", operation_id="rollouts.list", response_model=RolloutList, responses=problems(401, 403))
def list_rollouts(session: SessionDep) -> dict[str, Any]:
    return {"rollouts": [crud.rollout_public(session, r, with_devices=False) for r in crud.list_rollouts(session)]}


@router.get("/v1/rollouts/{rollout_id}", operation_id="rollouts.get", response_model=RolloutView,
            responses=problems(401, 403, 404, 422))
def get_rollout(rollout_id: RolloutId, session: SessionDep, state: StateDep) -> dict[str, Any]:
    doc = crud.rollout_public(session, crud.get_rollout(session, rollout_id=rollout_id))
    doc["transfers"] = rollout_transfers(session, rollout_id=rollout_id, config=state.config)  # what travels
    return doc


def _act(state: ServerState, rollout_id: int, action: str, revert: bool = False) -> dict[str, Any]:
    with engine.rollout_writes(state.db) as session:
        crud.set_state(session, rollout_id=rollout_id, action=action, revert=revert)
    with state.db.session() as session:
        return crud.rollout_public(session, crud.get_rollout(session, rollout_id=rollout_id))


@router.post("/v1/rollouts/{rollout_id}/pause", operation_id="rollouts.pause", response_model=RolloutDetail,
             responses=CONTROL_ERRORS)
def pause(rollout_id: RolloutId, state: StateDep) -> dict[str, Any]:
    return _act(state, rollout_id, "pause")


@router.post("/v1/rollouts/{rollout_id}/resume", operation_id="rollouts.resume", response_model=RolloutDetail,
             responses=CONTROL_ERRORS)
def resume(rollout_id: RolloutId, state: StateDep) -> dict[str, Any]:
    return _act(state, rollout_id, "resume")


@router.post("/v1/rollouts/{rollout_id}/abort", operation_id="rollouts.abort", response_model=RolloutDetail,
             responses=CONTROL_ERRORS)
def abort(rollout_id: RolloutId, state: StateDep, body: AbortBody | None = None) -> dict[str, Any]:
    return _act(state, rollout_id, "abort", revert=body.revert if body else False)

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from edgefleet.server.api.deps import DB_ID_MAX, AdminDep, SessionDep
from edgefleet.server.api.errors import problems
from edgefleet.server.api.public.service import JobPublic
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.crud import jobs as crud

router = APIRouter(tags=["jobs"], dependencies=[AdminDep], route_class=ContractRoute)


@router.get("/v1/jobs/{job_id}", operation_id="jobs.get", response_model=JobPublic,
            responses=problems(401, 403, 404, 422))
def get_job(job_id: Annotated[int, Path(ge=1, le=DB_ID_MAX)], session: SessionDep) -> dict[str, Any]:
    """A background job's state and progress."""
    return crud.job_public(crud.get_job(session, job_id=job_id))

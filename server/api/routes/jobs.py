from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from server.api.deps import DB_ID_MAX, AdminDep, SessionDep
from server.crud import jobs as crud

router = APIRouter(tags=["jobs"], dependencies=[AdminDep])


@router.get("/v1/jobs/{job_id}")
def get_job(job_id: Annotated[int, Path(ge=1, le=DB_ID_MAX)], session: SessionDep) -> dict[str, Any]:
    return crud.job_public(crud.get_job(session, job_id=job_id))

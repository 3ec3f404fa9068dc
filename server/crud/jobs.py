"""Background job records."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.crud import NotFound
from server.db.models import Job


def create_job(session: Session, *, kind: str, params: dict[str, Any]) -> Job:
    now = time.time()
    job = Job(kind=kind, state="queued", progress=0.0, params=params, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} is not known")
    return job


def update_job(session: Session, *, job_id: int, state: str | None = None, progress: float | None = None,
               message: str | None = None, result: dict[str, Any] | None = None) -> None:
    job = get_job(session, job_id=job_id)
    if state is not None:
        job.state = state
    if progress is not None:
        job.progress = max(0.0, min(1.0, progress))
    if message is not None:
        job.message = message[:2000]
    if result is not None:
        job.result = result
    job.updated_at = time.time()


def fail_interrupted(session: Session) -> int:
    """Jobs left queued/running by a previous process are failed at start-up."""
    rows = list(session.scalars(select(Job).where(Job.state.in_(("queued", "running")))))
    for job in rows:
        job.state, job.message, job.updated_at = "failed", "interrupted by a server restart", time.time()
    return len(rows)


def job_public(job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state, "progress": job.progress,
            "message": job.message, "params": job.params, "result": job.result,
            "created_at": job.created_at, "updated_at": job.updated_at}

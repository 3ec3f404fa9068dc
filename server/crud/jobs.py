"""Background job records."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from edgefleet.server.crud import NotFound
from edgefleet.server.db.models import Job


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


def claim_next(session: Session, *, holder: str, kinds: tuple[str, ...],
               until: float) -> tuple[int, str, dict[str, Any]] | None:
    """Claim the oldest queued job of these kinds for ``holder`` until ``until``: (id, kind, params), or None.

    PostgreSQL skips rows another replica is claiming (FOR UPDATE SKIP LOCKED); SQLite renders no FOR
    UPDATE, and there the update's ``state = 'queued'`` condition keeps a claim exclusive."""
    query = (select(Job.id, Job.kind, Job.params).where(Job.state == "queued", Job.kind.in_(kinds))
             .order_by(Job.id).limit(1).with_for_update(skip_locked=True))
    row = session.execute(query).first()
    if row is None:
        return None
    claimed: Any = session.execute(update(Job).where(Job.id == row.id, Job.state == "queued").values(
        state="running", claimed_by=holder, claim_expires_at=until, message="started", updated_at=time.time()))
    if claimed.rowcount != 1:
        return None
    return int(row.id), str(row.kind), dict(row.params or {})


def renew_claims(session: Session, *, job_ids: list[int], holder: str, until: float) -> None:
    session.execute(update(Job).where(Job.id.in_(job_ids), Job.claimed_by == holder, Job.state == "running")
                    .values(claim_expires_at=until))


def fail_expired_claims(session: Session, *, now: float) -> list[tuple[int, str, dict[str, Any], str]]:
    """Running jobs whose claim expired (their replica died) are failed: (id, kind, params, holder) of each."""
    rows = list(session.scalars(select(Job).where(
        Job.state == "running", or_(Job.claim_expires_at.is_(None), Job.claim_expires_at < now))
        .with_for_update(skip_locked=True)))
    for job in rows:
        job.state, job.updated_at = "failed", time.time()
        job.message = f"interrupted: replica {job.claimed_by or 'of an earlier server'} stopped"
    return [(job.id, job.kind, dict(job.params or {}), job.claimed_by or "unknown") for job in rows]


def expire_all_claims(session: Session) -> None:
    """SQLite, at start-up: one process owns the database, so whatever was running was interrupted."""
    session.execute(update(Job).where(Job.state == "running").values(claim_expires_at=0.0))


def finish_job(session: Session, *, job_id: int, holder: str, state: str, message: str,
               progress: float | None = None, result: dict[str, Any] | None = None) -> bool:
    """Record a claimed job's outcome; False when the claim was lost meanwhile (the row is left alone)."""
    values: dict[str, Any] = {"state": state, "message": message[:2000], "updated_at": time.time()}
    if progress is not None:
        values["progress"] = progress
    if result is not None:
        values["result"] = result
    done: Any = session.execute(update(Job).where(Job.id == job_id, Job.claimed_by == holder,
                                                  Job.state == "running").values(**values))
    return bool(done.rowcount == 1)


def job_public(job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "state": job.state, "progress": job.progress,
            "message": job.message, "params": job.params, "result": job.result,
            "created_at": job.created_at, "updated_at": job.updated_at}

"""Background jobs: rows of the ``jobs`` table, run by worker threads in whichever replica claims them.

Submitting a job inserts it ``queued``; every replica's workers claim queued rows one at a time
(``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so each job runs once however many replicas
poll) and hold the claim for ``claim_ttl_s`` on the database's clock, renewed while the job runs. A
claim that expires means its replica died: any replica's worker then fails the job ("interrupted"),
as one server restarting does, and calls the kind's clean-up.

A job function gets its params and a ``progress(fraction, message)`` callback. Its outcome is
published by the function itself in one transaction at the end; an exception marks the job failed and
publishes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.server.crud import jobs as crud
from edgefleet.server.db import Database

log = logging.getLogger("edgefleet.server.jobs")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class JobKind:
    run: Callable[[int, dict[str, Any], Progress], dict[str, Any]]  # (job id, params, progress) -> result
    on_failure: Callable[[int, dict[str, Any], str], None] | None = None  # (job id, params, reason)


class JobRunner:
    def __init__(self, db: Database, *, holder: str, workers: int = 1, claim_ttl_s: float = 15.0,
                 poll_s: float = 1.0, progress_interval_s: float = 0.25) -> None:
        self.db = db
        self.holder = holder
        self.kinds: dict[str, JobKind] = {}
        self.claim_ttl_s = claim_ttl_s
        self.poll_s = poll_s
        self.progress_interval_s = progress_interval_s
        self._wake = threading.Condition()
        self._pending_wakes = 0
        self._stop = threading.Event()
        self._running: set[int] = set()
        self._running_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"edgefleet-job-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._renew, name="edgefleet-job-claims", daemon=True))

    def register(self, kind: str, job: JobKind) -> None:
        self.kinds[kind] = job

    def submit(self, *, kind: str, params: dict[str, Any]) -> int:
        with self.db.session() as session:
            job_id = crud.create_job(session, kind=kind, params=params).id
        self.wake()
        return job_id

    def wake(self) -> None:
        """A job was queued here: a worker of this replica looks now rather than at its next poll."""
        with self._wake:
            self._pending_wakes += 1
            self._wake.notify()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        """Stop claiming; a job still running is left to its claim's expiry (another replica fails it)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()

    # --- workers -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                claimed = self._claim()
            except Exception as exc:  # the database is away: try again at the next poll
                log.warning("jobs: cannot claim (%s)", exc)
                claimed = None
            if claimed is None:
                with self._wake:
                    if not self._pending_wakes:
                        self._wake.wait(self.poll_s)
                    self._pending_wakes = max(0, self._pending_wakes - 1)
                continue
            self._run(*claimed)

    def _claim(self) -> tuple[int, str, dict[str, Any]] | None:
        with self.db.session() as session:
            claimed = crud.claim_next(session, holder=self.holder, kinds=tuple(self.kinds),
                                      until=self.db.now(session) + self.claim_ttl_s)
        if claimed is not None:
            with self._running_lock:
                self._running.add(claimed[0])
        return claimed

    def _reap(self) -> None:
        with self.db.session() as session:
            expired = crud.fail_expired_claims(session, now=self.db.now(session))
        for job_id, kind, params, holder in expired:
            log.warning("job %s (%s) failed: its replica %s stopped renewing the claim", job_id, kind, holder)
            self._clean_up(job_id, kind, params, f"interrupted: replica {holder} stopped")

    def _renew(self) -> None:
        while not self._stop.wait(self.claim_ttl_s / 3):
            with self._running_lock:
                running = list(self._running)
            if not running:
                continue
            try:
                with self.db.session() as session:
                    crud.renew_claims(session, job_ids=running, holder=self.holder,
                                      until=self.db.now(session) + self.claim_ttl_s)
            except Exception as exc:
                log.warning("jobs: claims not renewed (%s)", exc)

    def _run(self, job_id: int, kind: str, params: dict[str, Any]) -> None:
        last = 0.0

        def progress(fraction: float, message: str) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < self.progress_interval_s:
                return
            last = now
            with self.db.session() as session:
                crud.update_job(session, job_id=job_id, progress=fraction, message=message)

        try:
            job = self.kinds[kind]
            try:
                result = job.run(job_id, params, progress)
            except Exception as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
                log.warning("job %s failed: %s", job_id, reason)
                self._clean_up(job_id, kind, params, reason)
                self._finish(job_id, state="failed", message=reason)
                return
            self._finish(job_id, state="succeeded", progress=1.0, message="done", result=result)
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    def _finish(self, job_id: int, **values: Any) -> None:
        with self.db.session() as session:
            if not crud.finish_job(session, job_id=job_id, holder=self.holder, **values):
                log.warning("job %s: its claim had expired; the outcome stays as another replica set it", job_id)

    def _clean_up(self, job_id: int, kind: str, params: dict[str, Any], reason: str) -> None:
        job = self.kinds.get(kind)
        if job is None or job.on_failure is None:
            return
        try:
            job.on_failure(job_id, params, reason)
        except Exception:
            log.exception("job %s: clean-up after failure failed", job_id)

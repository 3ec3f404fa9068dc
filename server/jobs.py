"""Background jobs: a thread pool and the ``jobs`` table (state, progress, message).

A job function gets a ``progress(fraction, message)`` callback. Its outcome is published by
the function itself in one transaction at the end; an exception marks the job failed and
publishes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from server.crud import jobs as crud
from server.db import Database

log = logging.getLogger("edgefleet.server.jobs")

Progress = Callable[[float, str], None]
JobFunction = Callable[[int, Progress], dict[str, Any]]


class JobRunner:
    def __init__(self, db: Database, workers: int = 1, progress_interval_s: float = 0.25) -> None:
        self.db = db
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgefleet-job")
        self.progress_interval_s = progress_interval_s
        self.futures: dict[int, Future[None]] = {}

    def create(self, *, kind: str, params: dict[str, Any]) -> int:
        with self.db.session() as session:
            return crud.create_job(session, kind=kind, params=params).id

    def start(self, job_id: int, function: JobFunction, on_failure: Callable[[int, str], None] | None = None) -> None:
        self.futures[job_id] = self.pool.submit(self._run, job_id, function, on_failure)

    def submit(self, *, kind: str, params: dict[str, Any], function: JobFunction,
               on_failure: Callable[[int, str], None] | None = None) -> int:
        job_id = self.create(kind=kind, params=params)
        self.start(job_id, function, on_failure)
        return job_id

    def _run(self, job_id: int, function: JobFunction, on_failure: Callable[[int, str], None] | None) -> None:
        last = 0.0

        def progress(fraction: float, message: str) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < self.progress_interval_s:
                return
            last = now
            with self.db.session() as session:
                crud.update_job(session, job_id=job_id, progress=fraction, message=message)

        with self.db.session() as session:
            crud.update_job(session, job_id=job_id, state="running", message="started")
        try:
            result = function(job_id, progress)
        except Exception as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
            log.warning("job %s failed: %s", job_id, reason)
            if on_failure is not None:
                try:
                    on_failure(job_id, reason)
                except Exception:
                    log.exception("job %s: clean-up after failure failed", job_id)
            with self.db.session() as session:
                crud.update_job(session, job_id=job_id, state="failed", message=reason)
            return
        with self.db.session() as session:
            crud.update_job(session, job_id=job_id, state="succeeded", progress=1.0, message="done", result=result)

    def wait(self, job_id: int, timeout: float | None = None) -> None:
        future = self.futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

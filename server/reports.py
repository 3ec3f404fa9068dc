"""Update reports written with group commit.

Rollout writes are serialized (``rollout_writes``, across threads and replicas). With one transaction
per report, a wave of thousands of devices reporting downloading → installing → trial → committed filled
every HTTP thread with requests waiting for that lock, and check-ins queued behind them for seconds.
Here the requests wait as coroutines; one writer thread takes every report queued so far and applies
them in one transaction, and each request is answered once its report is committed (a device deletes a report
only when it is acknowledged, so nothing acknowledged is lost).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastapi import HTTPException
from sqlalchemy.orm import Session

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.api.auth import device_refusal
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import rollouts as rollout_crud
from edgefleet.server.db import Database
from edgefleet.server.rollouts import rollout_writes

log = logging.getLogger("edgefleet.server.reports")


@dataclass
class _Pending:
    device_id: str
    token: str
    report: UpdateReport
    # None once committed; an HTTPException for a token that does not authenticate the device
    done: Future[HTTPException | None] = field(default_factory=Future)


class ReportWriter:
    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-report-writer", daemon=True)
        self.batches = 0
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=timeout)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, device_id: str, token: str, report: UpdateReport) -> Future[HTTPException | None]:
        pending = _Pending(device_id, token, report)
        if not self._thread.is_alive():
            pending.done.set_exception(RuntimeError("the report writer is not running"))
        else:
            self._queue.put(pending)
        return pending.done

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:  # no waiting: what queued during the last commit
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[_Pending]) -> None:
        try:
            with rollout_writes(self.db) as session:
                # devices in id order, as the ingest writers lock them: no deadlock with another replica
                order = sorted(range(len(batch)), key=lambda i: batch[i].device_id)
                applied = {i: _apply(session, batch[i]) for i in order}
                outcomes = [applied[i] for i in range(len(batch))]
        except Exception as exc:
            if len(batch) > 1:  # one bad report must not fail the others: write them one by one
                log.warning("a batch of %d reports failed (%s); writing them one by one", len(batch), exc)
                for item in batch:
                    self._write([item])
                return
            log.error("report from %s not written: %s", batch[0].device_id, exc)
            batch[0].done.set_exception(exc)
            return
        self.batches += 1
        self.written += sum(outcome is None for outcome in outcomes)
        for item, outcome in zip(batch, outcomes, strict=True):
            item.done.set_result(outcome)


def _apply(session: Session, item: _Pending) -> HTTPException | None:
    device = device_crud.device_for_token(session, device_id=item.device_id, token=item.token)
    if device is None:
        return device_refusal(session, item.device_id, item.token)
    rollout_crud.record_report(session, device=device, report=item.report)
    return None

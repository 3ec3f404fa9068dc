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
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.api.auth import device_refusal
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import rollouts as rollout_crud
from edgefleet.server.db import Database
from edgefleet.server.db.models import Device, Model, ModelVersion, Rollout, RolloutDevice
from edgefleet.server.rollouts import rollout_writes

log = logging.getLogger("edgefleet.server.reports")
CHUNK = 500  # ids per IN (...) of the batch's look-ups


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
                loaded = _load(session, batch)  # held: the session keeps only weak references to clean rows
                # devices in id order, as the ingest writers lock them: no deadlock with another replica
                order = sorted(range(len(batch)), key=lambda i: batch[i].device_id)
                applied = {i: _apply(session, batch[i]) for i in order}
                outcomes = [applied[i] for i in range(len(batch))]
                del loaded
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


def _load(session: Session, batch: list[_Pending]) -> list[object]:
    """The batch's devices, their rollouts (with version and model) and rollout rows in a few queries (locked:
    devices in id order, then rollouts), so applying a report finds them in the session instead of querying
    five times."""
    device_ids = sorted({item.device_id for item in batch})
    devices: list[Device] = []
    for start in range(0, len(device_ids), CHUNK):
        devices += session.scalars(select(Device).where(Device.id.in_(device_ids[start:start + CHUNK]))
                                   .order_by(Device.id).with_for_update())
    known = {device.id: device for device in devices}
    rollout_ids = sorted({rollout_id for item in batch if item.device_id in known
                          for rollout_id in (item.report.rollout_id, known[item.device_id].desired_rollout_id)
                          if rollout_id is not None})
    loaded: list[object] = list(devices)
    if not rollout_ids:
        return loaded
    rollouts = list(session.scalars(select(Rollout).where(Rollout.id.in_(rollout_ids)).order_by(Rollout.id)
                                    .with_for_update()))
    versions = list(session.scalars(select(ModelVersion).where(ModelVersion.id.in_({r.version_id for r in rollouts}))))
    loaded += [*rollouts, *versions]
    loaded += session.scalars(select(Model).where(Model.id.in_({v.model_id for v in versions})))
    for start in range(0, len(device_ids), CHUNK):
        loaded += session.scalars(select(RolloutDevice).where(
            RolloutDevice.rollout_id.in_(rollout_ids), RolloutDevice.device_id.in_(device_ids[start:start + CHUNK])))
    return loaded


def _apply(session: Session, item: _Pending) -> HTTPException | None:
    device = device_crud.device_for_token(session, device_id=item.device_id, token=item.token)
    if device is None:
        return device_refusal(session, item.device_id, item.token)
    rollout_crud.record_report(session, device=device, report=item.report, lock=False)
    return None

"""Download offers recorded off the check-in path, many in one transaction.

A check-in that brings a new manifest used to write ``Device.offered`` in its own transaction: on SQLite that
waited for the one write lock behind the report and telemetry writers (check-in p50 366 ms, p99 2.0 s while
1,000 devices updated). The offer is only a record of what was sent, and a download whose offer is not
stored yet is judged against the manifest of now (server/offers.py), so the check-in hands it here and
answers at once; this thread writes what queued, the latest offer of each device, in device id order (the
order the report and ingest writers lock devices in: no deadlock on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from sqlalchemy import Table, bindparam, update

from edgefleet.server.db import Database
from edgefleet.server.db.models import Device

log = logging.getLogger("edgefleet.server.offers")
_devices = cast(Table, Device.__table__)
# a device deleted since its check-in matches no row, and that is fine (no ORM row-count check)
OFFER_UPDATE = update(_devices).where(_devices.c.id == bindparam("b_id")).values(offered=bindparam("b_offered"))


class OfferWriter:
    def __init__(self, db: Database, max_batch: int = 2000) -> None:
        self.db = db
        self.max_batch = max_batch
        self._pending: dict[str, dict[str, Any] | None] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._writing = 0  # offers taken for the transaction under way
        self._thread = threading.Thread(target=self._loop, name="edgefleet-offer-writer", daemon=True)
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def submit(self, device_id: str, offer: dict[str, Any] | None) -> bool:
        """Queue ``offer`` as the device's; False (nothing queued) when the writer is not running."""
        if not self._thread.is_alive():
            return False
        with self._cond:
            self._pending[device_id] = offer
            self._cond.notify()
        return True

    def pending(self) -> int:
        """Offers not stored yet: queued, or in the transaction under way."""
        with self._cond:
            return len(self._pending) + self._writing

    def _take(self) -> tuple[list[tuple[str, dict[str, Any] | None]], bool]:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            ids = sorted(self._pending)[:self.max_batch]
            self._writing = len(ids)
            return [(device_id, self._pending.pop(device_id)) for device_id in ids], self._stopping

    def _loop(self) -> None:
        while True:
            batch, stopping = self._take()
            if batch:
                self._write(batch)
            with self._cond:
                self._writing = 0
                if stopping and not self._pending:
                    return

    def _write(self, batch: list[tuple[str, dict[str, Any] | None]]) -> None:
        try:
            with self.db.session() as session:
                session.execute(OFFER_UPDATE, [{"b_id": device_id, "b_offered": offer} for device_id, offer in batch])
        except Exception as exc:  # the download routes fall back to the manifest of now: nothing is locked out
            self.failed += len(batch)
            log.warning("%d download offers not recorded: %s", len(batch), str(exc).splitlines()[0])
            return
        self.written += len(batch)

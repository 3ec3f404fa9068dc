"""Leader leases: one replica at a time runs each singleton loop (rollout evaluation, retention, GC).

On PostgreSQL a lease is a row of ``leases``: name, holder, and an expiry on the database's clock (so
replicas whose clocks disagree still agree on it). The holder renews it every ``ttl/3``; any other
replica takes it once it has expired, so a dead leader is replaced within ``ttl``. A holder that
cannot renew (database unreachable) stops acting when its own deadline passes, which is set from the
monotonic clock before each renewal and ends a fifth of ``ttl`` before the row's expiry. A replica
that stops cleanly gives its leases up at once.

A row rather than ``pg_advisory_lock``: it holds through a transaction-pooling PgBouncer (a session
lock does not), and ``SELECT * FROM leases`` tells an operator who leads what.

The lease saves work and keeps a loop from running twice at once; no write depends on it for its
correctness (rollout writes take a transaction-scoped advisory lock and the rollout's row lock, jobs
are claimed row by row). On SQLite, one process by design, every lease is held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql

from edgefleet.server.db import Database
from edgefleet.server.db.models import Lease

log = logging.getLogger("edgefleet.server.leases")

ROLLOUTS, RETENTION, GC = "rollouts", "retention", "gc"
LOOPS = (ROLLOUTS, RETENTION, GC)


class Leases:
    def __init__(self, db: Database, holder: str, names: Iterable[str] = LOOPS, ttl_s: float = 5.0) -> None:
        self.db = db
        self.holder = holder
        self.names = tuple(names)
        self.ttl_s = ttl_s
        self.shared = db.dialect == "postgresql"
        self._deadline: dict[str, float] = {}  # monotonic time until which this replica may act
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-leases", daemon=True)

    def held(self, name: str) -> bool:
        if not self.shared:
            return True
        return time.monotonic() < self._deadline.get(name, 0.0)

    def holding(self) -> dict[str, bool]:
        return {name: self.held(name) for name in self.names}

    def start(self) -> None:
        if self.shared:
            self.renew()
            self._thread.start()

    def stop(self) -> None:
        """Give up every lease held, so another replica takes over without waiting for the expiry."""
        if not self.shared:
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ttl_s)
        self._deadline.clear()
        try:
            with self.db.session() as session:
                session.execute(update(Lease).where(Lease.holder == self.holder).values(expires_at=0.0))
        except Exception as exc:  # the lease then expires by itself
            log.warning("leases: could not hand over (%s)", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def renew(self) -> None:
        """Take or extend every lease this replica can hold now."""
        for name in self.names:
            started = time.monotonic()
            try:
                won = self._acquire(name)
            except Exception as exc:
                log.warning("leases: %s not renewed (%s)", name, exc)
                continue  # the deadline stands: acting stops when it passes
            was = self.held(name)
            if won:
                self._deadline[name] = started + self.ttl_s * 0.8
            else:
                self._deadline.pop(name, None)
            if won != was:
                log.info("leases: %s %s %s", self.holder, "now leads" if won else "no longer leads", name)

    def _acquire(self, name: str) -> bool:
        with self.db.session() as session:
            now = self.db.now(session)
            insert = postgresql.insert(Lease).values(name=name, holder=self.holder, expires_at=now + self.ttl_s,
                                                     acquired_at=now)
            statement = insert.on_conflict_do_update(
                index_elements=[Lease.name],
                set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at,
                      "acquired_at": _kept_if_same_holder(insert)},
                where=(Lease.holder == self.holder) | (Lease.expires_at < now),
            ).returning(Lease.holder)
            return session.execute(statement).first() is not None


def _kept_if_same_holder(insert: postgresql.Insert) -> object:
    return case((Lease.holder == insert.excluded.holder, Lease.acquired_at), else_=insert.excluded.acquired_at)


def leaders(db: Database) -> dict[str, str]:
    """Who holds each unexpired lease now (for /metrics and operators)."""
    with db.session() as session:
        now = db.now(session)
        return {name: holder for name, holder in session.execute(
            select(Lease.name, Lease.holder).where(Lease.expires_at >= now))}

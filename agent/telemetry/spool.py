"""The store-and-forward spool: a bounded SQLite (WAL) queue of messages not yet acknowledged.

Every telemetry and event message is written here first, with its ``seq`` assigned in the same
transaction that stores it, so ``seq`` and the queue survive a restart together. ``epoch`` names the
spool ``seq`` counts in: a new spool (first start, a corrupt one re-created, a re-imaged box) gets a
new one, so the server, which deduplicates on (device, epoch, seq), stores a reset device again. A row is
deleted only when the broker acknowledged it (QoS 1 PUBACK). Limits: total payload bytes and
age; the oldest rows go first and are counted in ``dropped`` (persisted). A write that fails
(disk full, I/O error) is counted in ``errors`` and never raises.

``synchronous=NORMAL`` in WAL mode: a process crash loses nothing; a power cut can lose the
last transactions since the previous checkpoint, never corrupt the file.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    leaf TEXT NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    id: int
    leaf: str
    payload: bytes


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self.errors = 0
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database: keep it for a post-mortem, start afresh
            aside = path.with_name(f"{path.name}.corrupt-{int(self._clock())}")
            log.error("telemetry spool %s is unreadable (%s); moved to %s", path, exc, aside)
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self._db = self._open(path)
        self.seq = self._meta("seq")
        self.epoch = self._epoch()
        self.dropped = self._meta("dropped")
        self._bytes, self._queued, self.tail_id = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*), COALESCE(MAX(id), 0) FROM spool").fetchone()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _epoch(self) -> int:
        """The epoch ``seq`` counts in: made when the spool is (a new, re-created or re-imaged one starts a new
        epoch), persisted beside ``seq``. A spool from before epochs keeps counting in epoch 0."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is not None:
            return int(row[0])
        # creation time in ms, times 1000 plus 3 random digits: two resets in the same ms (or a Pi without
        # a clock booting to the same instant twice) still differ; below 2**53, exact in any JSON reader
        epoch = 0 if self.seq else int(self._clock() * 1000) * 1000 + secrets.randbelow(1000)
        try:
            self._set_meta("epoch", epoch)
        except sqlite3.Error as exc:
            self.errors += 1
            log.warning("telemetry spool could not persist its epoch: %s", exc)
        return epoch

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        return {"queued": self._queued, "bytes": self._bytes, "dropped": self.dropped, "errors": self.errors}

    def append(self, leaf: str, build: Callable[[int], bytes]) -> int | None:
        """Store ``build(seq)`` under the next ``seq``; returns the seq, or None when it could not be stored."""
        with self._lock:
            if self._closed:
                self.errors += 1
                return None
            seq = self.seq + 1
            payload = build(seq)
            now = self._clock()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute("INSERT INTO spool(leaf, ts, payload) VALUES(?, ?, ?)", (leaf, now, payload))
                self._set_meta("seq", seq)
                nbytes, nrows, ndropped = len(payload), 1, 0
                evicted = self._evict_locked(now, self._bytes + nbytes)
                nbytes -= evicted[0]
                nrows -= evicted[1]
                ndropped += evicted[1]
                if ndropped:
                    self._set_meta("dropped", self.dropped + ndropped)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.errors += 1
                log.warning("telemetry spool write failed (%s); message seq %d not stored", exc, seq)
                return None
            self.seq = seq
            self.tail_id = int(cur.lastrowid or self.tail_id)
            self._bytes += nbytes
            self._queued += nrows
            self.dropped += ndropped
            return seq

    def _evict_locked(self, now: float, total_bytes: int) -> tuple[int, int]:
        """Delete rows past the age limit and the oldest rows over the size limit; (bytes, rows) freed."""
        freed_bytes = freed_rows = 0
        cutoff = now - self.max_age_s
        oldest = self._db.execute("SELECT ts FROM spool ORDER BY id LIMIT 1").fetchone()
        if oldest is not None and oldest[0] < cutoff:  # the oldest row is too old: sweep all past the cutoff
            rows, nbytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE ts < ?", (cutoff,)).fetchone()
            self._db.execute("DELETE FROM spool WHERE ts < ?", (cutoff,))
            freed_rows += rows
            freed_bytes += nbytes
        excess = total_bytes - freed_bytes - self.max_bytes
        if excess > 0:
            last_id, seen = None, 0
            for row_id, size in self._db.execute("SELECT id, LENGTH(payload) FROM spool ORDER BY id"):
                last_id, seen = row_id, seen + size
                freed_rows += 1
                if seen >= excess:
                    break
            if last_id is not None:
                self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
                freed_bytes += seen
        return freed_bytes, freed_rows

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def peek(self, after_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with id > ``after_id``, oldest first."""
        with self._lock:
            if self._closed:
                return []
            try:
                rows = self._db.execute("SELECT id, leaf, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                                        (after_id, limit)).fetchall()
            except sqlite3.Error as exc:
                self.errors += 1
                log.warning("telemetry spool read failed: %s", exc)
                return []
        return [Row(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def remove(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._lock:
            if self._closed:
                return 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(id_list))
                rows, nbytes = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE id IN ({marks})",
                    id_list).fetchone()
                self._db.execute(f"DELETE FROM spool WHERE id IN ({marks})", id_list)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.errors += 1
                log.warning("telemetry spool delete failed (%s); those messages may be sent twice", exc)
                return 0
            self._queued -= rows
            self._bytes -= nbytes
            return int(rows)

    def next_counter(self, key: str) -> int:
        """Increment and return a persisted counter (the MQTT ``session``); in memory if the disk fails."""
        with self._lock:
            value = self._meta(key) + 1 if not self._closed else 1
            try:
                self._set_meta(key, value)
            except sqlite3.Error as exc:
                self.errors += 1
                log.warning("telemetry spool could not persist %s: %s", key, exc)
            return value

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()

"""The batch writer against the real databases: a batch the database refuses is split until the one message it
refuses is alone (the others are all stored), and a database that is down is waited for, not dropped."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.config import TelemetrySection
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import rollouts as rollout_crud
from edgefleet.server.db import Database, migrate
from edgefleet.server.db.models import Device, Telemetry
from edgefleet.server.ingest import BatchWriter, IngestStats
from edgefleet.server.ingest_rejections import Rejections
from edgefleet.server.ingest_validation import Rejected
from tests.support.databases import database_url, migrated_database, postgres_reason

PG_SKIP = postgres_reason()
ROOT = "edgefleet/v1/devices"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres, pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path, ("d1", "d2")) as database:
        yield database


def message(device: str, seq: int, **extra: object) -> tuple[str, bytes, float]:
    doc = {"seq": seq, "ts": time.time(), "inference": {"count": 1}, **extra}
    return f"{ROOT}/{device}/telemetry", json.dumps(doc).encode(), time.time()


def rows(db: Database, device: str) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Telemetry).where(Telemetry.device_id == device))
                   or 0)


def test_a_batch_the_database_refuses_is_split_so_only_that_message_is_lost(db: Database) -> None:
    """Without validation (the benchmark's baseline) the database itself refuses a seq past BIGINT: the batch
    is bisected and that one message is counted as refused_by_database; the 60 around it are stored."""
    stats = IngestStats()
    writer = BatchWriter(db, TelemetrySection(), stats, validate=False)
    batch = [message("d1", seq) for seq in range(1, 31)] + [message("d2", 2**64)] + \
        [message("d1", seq) for seq in range(31, 61)] + [message("d2", 1)]
    writer.write(batch)
    assert (rows(db, "d1"), rows(db, "d2")) == (60, 1)
    assert stats.rejections.by_reason["refused_by_database"] == 1 and stats.written == 61
    with db.session() as session:
        device = session.get(Device, "d2")
        assert device is not None and device.rejected == 1
        assert "the database refused it" in (device.rejected_reason or "")


def test_the_same_batch_with_validation_never_reaches_the_database(db: Database) -> None:
    stats = IngestStats()
    BatchWriter(db, TelemetrySection(), stats).write([message("d1", 1), message("d2", 2**64), message("d1", 2)])
    assert (rows(db, "d1"), rows(db, "d2")) == (2, 0)
    assert stats.rejections.by_reason["out_of_range"] == 1 and stats.rejections.by_reason["refused_by_database"] == 0


@pytest.mark.postgres
@pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")
def test_a_database_that_cannot_take_the_batch_is_waited_for(tmp_path: Path) -> None:
    """A database that answers "busy" (a lock held past lock_timeout) is transient: the batch is retried
    until it is stored, nothing the broker acknowledged is dropped, nothing counted as refused."""
    with database_url("postgresql", tmp_path) as url:
        db = Database(url)
        migrate(db.engine)
        with db.session() as session:
            device_crud.enroll_device(session, device_id="d1", device_class=None, tags=[], hw={})
        stats = IngestStats()
        writer = BatchWriter(Database(url + "%20-clock_timeout%3D200"), TelemetrySection(), stats)
        with db.engine.connect() as holder:
            holder.exec_driver_sql("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
            thread = threading.Thread(target=writer._write_until_stored,
                                      args=([message("d1", 1), message("d1", 2)],))
            thread.start()
            time.sleep(2.0)
            assert thread.is_alive()
            holder.rollback()
        thread.join(30)
        assert not thread.is_alive() and rows(db, "d1") == 2 and stats.rejections.total == 0
        writer.db.dispose()
        db.dispose()


def test_rejections_are_logged_once_per_device_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    rejections = Rejections(log_interval_s=60, max_tracked=3, clock=lambda: clock[0])
    bad = Rejected("out_of_range", "telemetry: seq: too big")
    with caplog.at_level(logging.WARNING, logger="edgefleet.server.ingest"):
        for _ in range(50):
            rejections.add("cam-01", bad, enrolled=True, at=1.0)
        for i in range(200):  # a spray of made-up ids: one line, bounded memory
            rejections.add(f"ghost-{i}", Rejected("unenrolled", "telemetry: not enrolled"), enrolled=False, at=1.0)
        clock[0] = 61.0
        rejections.add("cam-01", bad, enrolled=True, at=2.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ingest: refused a message from device 'cam-01': telemetry: seq: too big (out_of_range)",
                     "ingest: refused a message from ids that are not enrolled, nothing stored (this one "
                     "'ghost-0'): telemetry: not enrolled (unenrolled)",
                     "ingest: refused 50 messages from device 'cam-01' in the last 61s; the last: "
                     "telemetry: seq: too big (out_of_range)"]
    assert rejections.by_reason["out_of_range"] == 51 and rejections.by_reason["unenrolled"] == 200
    assert rejections.take_device_counts() == {"cam-01": (51, "telemetry: seq: too big (out_of_range)", 2.0)}
    assert len(rejections._logged) <= 3


@pytest.mark.postgres
@pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")
def test_the_live_state_update_rewrites_device_rows_in_their_pages(tmp_path: Path) -> None:
    """Migration 0011 leaves half of each devices page free: the writer's update of every reporting device is
    then mostly HOT (the new row version stays on its page, none of the four indexes gets an entry). Measured on
    the first update (rows grow as their live columns fill, so not all fit): 324 of 400 here, none with
    pages packed full. Later updates need the dead versions pruned, which a transaction open elsewhere in the
    cluster can hold back, so they are not measured here."""
    from sqlalchemy import text

    from edgefleet.server.crud import telemetry as crud

    device_ids = tuple(f"dev-{i:04d}" for i in range(400))  # a few dozen pages of rows
    live = {device_id: {"ts_replaced": 0, "last_seen": 1.0e9 + i, "p95_ms": 3.5, "cpu_pct": 20.0,
                        "model_name": "det", "model_version": 2, "runtime": "onnxruntime", "delegate": None}
            for i, device_id in enumerate(device_ids)}
    counters = text("SELECT pg_stat_get_xact_tuples_updated('devices'::regclass), "
                    "pg_stat_get_xact_tuples_hot_updated('devices'::regclass)")  # this backend's, not yet flushed
    with migrated_database("postgresql", tmp_path, device_ids) as db, db.session() as session:
        updated_before, hot_before = session.execute(counters).one()
        crud.apply_live(session, updates=live)
        updated, hot = (n - before for n, before in zip(session.execute(counters).one(),
                                                        (updated_before, hot_before), strict=True))
        assert updated == len(device_ids) and hot >= 0.5 * updated, (updated, hot)
        assert session.get(Device, "dev-0399").last_seen == 1.0e9 + 399  # type: ignore[union-attr]


def test_telemetry_received_before_a_commit_report_does_not_roll_the_model_back(db: Database) -> None:
    """The writer stores what it received a moment ago; a commit report handled in that moment is newer. Telemetry
    received before the report (model 1) and written after it leaves the device on model 2; telemetry received
    after it applies, whatever model it names (a device that went back to 1 on its own says so)."""
    writer = BatchWriter(db, TelemetrySection(), IngestStats())
    received = time.time()

    def telemetry(seq: int, version: int, at: float, p95: float) -> tuple[str, bytes, float]:
        topic, body, _ = message("d1", seq, model={"name": "det", "version": version},
                                 inference={"count": 1, "latency_ms": {"p50": 1.0, "p95": p95, "p99": p95}})
        return topic, body, at

    def live() -> tuple[int | None, float | None, float | None]:
        with db.session() as session:
            device = session.get(Device, "d1")
            assert device is not None
            return device.model_version, device.p95_ms, device.last_seen

    with db.session() as session:
        device = session.get(Device, "d1")
        assert device is not None
        rollout_crud.record_report(session, device=device, now=received + 1.0,
                                   report=UpdateReport(state="committed", model="det", version=2))
    writer.write([telemetry(1, 1, received, 9.0)])
    assert live() == (2, None, received + 1.0)
    writer.write([telemetry(2, 2, received + 2.0, 4.0)])
    assert live() == (2, 4.0, received + 2.0)
    writer.write([telemetry(3, 1, received + 3.0, 5.0)])
    assert live() == (1, 5.0, received + 3.0)
    assert rows(db, "d1") == 3

"""Telemetry, events and live device state from MQTT; retention and downsampling."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import JSON, Dialect, Insert, Table, bindparam, case, delete, func, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from edgefleet.agent.wire import Birth, Will
from edgefleet.server.crud import pg
from edgefleet.server.db.models import Device, DeviceEvent, LatencyHistRow, Telemetry, TelemetryRollup

TELEMETRY_COLUMNS = ("device_id", "epoch", "seq", "ts", "ts_replaced", "received_at", "model_name", "model_version",
                     "runtime", "count", "errors", "p50_ms", "p95_ms", "p99_ms", "fps", "cpu_pct", "mem_mb", "rss_mb",
                     "temp_c", "payload")
BEFORE_PAYLOAD = TELEMETRY_COLUMNS[:TELEMETRY_COLUMNS.index("payload")]  # payload is the last column
EVENT_COLUMNS = ("device_id", "epoch", "seq", "ts", "ts_replaced", "type", "payload")
LATENCY_COLUMNS = ("device_id", "epoch", "seq", "ts", "model_name", "model_version", "count", "i0", "counts")
HIST_SOURCE = {"count": "hist_count", "i0": "hist_i0", "counts": "hist_counts"}  # the staging table's names
LIVE_COLUMNS = ("last_seen", "p95_ms", "cpu_pct", "model_name", "model_version", "runtime", "delegate")


_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class JsonText(TypeDecorator[Any]):
    """A JSON column value handed over already serialized (ingestion serializes validated payloads once)."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


def _insert_ignore(session: Session, table: Any) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database {dialect}")


def telemetry_row(device_id: str, payload: dict[str, Any], received_at: float) -> dict[str, Any]:
    """Flatten one Telemetry document (already validated) into a row."""
    inference = payload.get("inference") or {}
    latency = inference.get("latency_ms") or {}
    system = payload.get("system") or {}
    model = payload.get("model") or {}
    return {
        "device_id": device_id, "epoch": int(payload.get("epoch", 0)), "seq": int(payload["seq"]),
        "ts": float(payload["ts"]), "ts_replaced": False, "received_at": received_at,
        "model_name": model.get("name"), "model_version": model.get("version"), "runtime": payload.get("runtime"),
        "count": inference.get("count"), "errors": inference.get("errors"), "p50_ms": latency.get("p50"),
        "p95_ms": latency.get("p95"), "p99_ms": latency.get("p99"), "fps": inference.get("fps"),
        "cpu_pct": system.get("cpu_pct"), "mem_mb": system.get("mem_mb"), "rss_mb": system.get("rss_mb"),
        "temp_c": system.get("temp_c"), "payload": payload,
    }


def _serialized(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row if isinstance(row["payload"], str) else {**row, "payload": json.dumps(row["payload"])}
            for row in rows]


def insert_telemetry(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (``payload`` a document or its JSON text); a (device_id, epoch, seq) already stored is skipped."""
    _insert_rows(session, Telemetry.__table__, TELEMETRY_COLUMNS, _serialized(rows))


def insert_events(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Rows with device_id, epoch, seq, ts, type, payload; duplicates skipped."""
    _insert_rows(session, DeviceEvent.__table__, EVENT_COLUMNS,
                 [{"epoch": 0, "ts_replaced": False, **row} for row in _serialized(rows)])


def insert_telemetry_and_latency(session: Session, *, rows: Sequence[tuple[dict[str, Any], dict[str, Any] | None]],
                                 ) -> set[tuple[str, int, int]]:
    """Telemetry rows, each with its latency histogram row or None: ``insert_telemetry`` and ``insert_latency``
    (what it returns) in one. On PostgreSQL one COPY carries both (a histogram row repeats its telemetry row's
    key, time and model): one staging table, two INSERT … SELECT."""
    if session.get_bind().dialect.name != "postgresql":
        insert_telemetry(session, rows=[row for row, _ in rows])
        return insert_latency(session, rows=[hist for _, hist in rows if hist is not None])
    if not rows:
        return set()
    return {(str(d), int(e), int(q)) for d, e, q in _copy_telemetry_and_latency(session, rows)}


def _copy_telemetry_and_latency(session: Session, rows: Sequence[tuple[dict[str, Any], dict[str, Any] | None]],
                                ) -> list[tuple[Any, ...]]:
    names = ", ".join(TELEMETRY_COLUMNS)
    hist_source = ", ".join(HIST_SOURCE.get(name, name) for name in LATENCY_COLUMNS)
    statements = (f"CREATE TEMP TABLE IF NOT EXISTS ingest_telemetry_hist ON COMMIT DELETE ROWS AS SELECT {names}, "
                  "NULL::int AS hist_count, NULL::int AS hist_i0, NULL::json AS hist_counts FROM telemetry "
                  "WITH NO DATA",
                  f"COPY ingest_telemetry_hist ({names}, hist_count, hist_i0, hist_counts) FROM STDIN",
                  f"INSERT INTO telemetry ({names}) SELECT {names} FROM ingest_telemetry_hist ON CONFLICT DO NOTHING",
                  f"INSERT INTO latency_hist ({', '.join(LATENCY_COLUMNS)}) SELECT {hist_source} "
                  "FROM ingest_telemetry_hist WHERE hist_counts IS NOT NULL ON CONFLICT DO NOTHING "
                  "RETURNING device_id, epoch, seq")
    no_hist = (None, None, None)
    with pg.cursor(session, statements[1]) as cursor:
        cursor.execute(statements[0])
        with cursor.copy(statements[1]) as copy:
            for row, hist in rows:
                payload = row["payload"]
                copy.write_row([*(row[name] for name in BEFORE_PAYLOAD),
                                payload if isinstance(payload, str) else json.dumps(payload),
                                *(no_hist if hist is None else
                                  (hist["count"], hist["i0"], _compact_json(hist["counts"])))])
        cursor.execute(statements[2])
        cursor.execute(statements[3])
        return list(cursor.fetchall())


def insert_latency(session: Session, *, rows: Sequence[dict[str, Any]]) -> set[tuple[str, int, int]]:
    """Latency histogram rows (``LATENCY_COLUMNS``, ``counts`` a list); a (device_id, epoch, seq) already stored
    is skipped, like its telemetry row. Returns the (device_id, epoch, seq) of the rows stored now, so that
    what is counted from them (fleet aggregates, /metrics) counts a redelivered message once."""
    serialized = [{**row, "counts": _compact_json(row["counts"])} for row in rows]
    table = cast(Table, LatencyHistRow.__table__)
    if not serialized:
        return set()
    if session.get_bind().dialect.name != "postgresql":  # one writer at a time: what is past the last id is ours
        last = session.scalar(select(func.max(table.c.id))) or 0
        cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:  # plain executemany: SQLAlchemy's per-row parameter processing doubled the writer's cost here
            cursor.executemany(f"INSERT OR IGNORE INTO latency_hist ({', '.join(LATENCY_COLUMNS)}) "
                               f"VALUES ({', '.join('?' * len(LATENCY_COLUMNS))})",
                               [tuple(row[name] for name in LATENCY_COLUMNS) for row in serialized])
            cursor.execute("SELECT device_id, epoch, seq FROM latency_hist WHERE id > ?", (last,))
            return {(str(d), int(e), int(q)) for d, e, q in cursor.fetchall()}
        except sqlite3.Error as exc:  # the same exception classes as every other statement (busy vs refused)
            raise DBAPIError.instance("INSERT INTO latency_hist", None, exc, sqlite3.Error) from exc
        finally:
            cursor.close()
    stored = _copy_rows(session, str(table.name), LATENCY_COLUMNS, serialized, returning="device_id, epoch, seq")
    return {(str(d), int(e), int(q)) for d, e, q in stored}


def _insert_rows(session: Session, table: Any, columns: Sequence[str], rows: list[dict[str, Any]], *,
                 json_column: str = "payload") -> None:
    """Insert-ignore: on PostgreSQL a COPY into a per-connection staging table, then one INSERT … SELECT … ON
    CONFLICT DO NOTHING (several times faster than row-by-row statements); elsewhere one executemany.
    ``json_column`` holds JSON text already serialized."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, str(table.name), columns, rows)
        return
    statement = _insert_ignore(session, table).values({json_column: bindparam(json_column, type_=JsonText())})
    session.connection().execute(statement, rows)


def _copy_rows(session: Session, table: str, columns: Sequence[str], rows: list[dict[str, Any]], *,
               returning: str | None = None) -> list[tuple[Any, ...]]:
    """``returning``: columns of the rows inserted (not those skipped as duplicates) to return."""
    names = ", ".join(columns)
    staging = f"ingest_{table}"
    statements = (f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
                  f"SELECT {names} FROM {table} WITH NO DATA",
                  f"COPY {staging} ({names}) FROM STDIN",
                  f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} ON CONFLICT DO NOTHING"
                  + (f" RETURNING {returning}" if returning else ""))
    with pg.cursor(session, statements[1]) as cursor:
        cursor.execute(statements[0])
        with cursor.copy(statements[1]) as copy:
            for row in rows:
                copy.write_row([row[name] for name in columns])
        cursor.execute(statements[2])
        return list(cursor.fetchall()) if returning else []


ENROLLED_PG = ("SELECT id, device_class FROM devices WHERE id IN (SELECT json_array_elements_text(%s::json)) "
               "AND token_hash IS NOT NULL")
LOCK_PG = "SELECT 1 FROM devices WHERE id IN (SELECT json_array_elements_text(%s::json)) ORDER BY id FOR UPDATE"


def enrolled_ids(session: Session, *, device_ids: Iterable[str]) -> set[str]:
    """Which of ``device_ids`` are enrolled (hold an approved token): only their messages are stored."""
    return set(enrolled_classes(session, device_ids=device_ids))


def enrolled_classes(session: Session, *, device_ids: Iterable[str]) -> dict[str, str | None]:
    """The enrolled ones of ``device_ids`` with their device class (the fleet's latency sums are by class)."""
    wanted = sorted(set(device_ids))
    if not wanted:
        return {}
    if session.get_bind().dialect.name == "postgresql":  # one array parameter, not a bind per id
        return {str(i): c for i, c in pg.execute(session, ENROLLED_PG, [pg.json_param(wanted)], fetch=True)}
    found: dict[str, str | None] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start:start + 1000]
        found.update((str(i), c) for i, c in session.execute(
            select(Device.id, Device.device_class).where(Device.id.in_(chunk), Device.token_hash.is_not(None))))
    return found


def status_is_newer(*, epoch: int, session_no: int, online: bool, known_epoch: int, known_session: int) -> bool:
    """Whether a status from (``epoch``, ``session_no``) supersedes the one recorded.

    In the recorded epoch, sessions only grow (a late will of an older connection is ignored). A birth from
    another epoch is a reset spool or a re-imaged box starting its sessions again: it is applied whatever its
    numbers; a will from another epoch only when that epoch is newer (epochs are creation times)."""
    if epoch == known_epoch:
        return session_no >= known_session
    return online or epoch > known_epoch


def apply_status(session: Session, *, device_id: str, status: Birth | Will, now: float) -> bool:
    """A birth or will from ``status`` of an enrolled device. Returns whether the device row changed."""
    device = session.get(Device, device_id)
    if device is None:
        return False
    known_session = device.session if device.session is not None else -1
    if not status_is_newer(epoch=status.epoch, session_no=status.session, online=status.online,
                           known_epoch=device.epoch or 0, known_session=known_session):
        return False
    device.session, device.epoch = status.session, status.epoch
    if isinstance(status, Birth):
        device.online = True
        device.last_seen = now
        device.model_name, device.model_version = status.model.name, status.model.version
        device.model_sha256 = status.model.sha256
        device.runtime, device.delegate = status.runtime, status.delegate
        device.agent_version = status.agent_version
        if status.device_class and not device.device_class:
            device.device_class = status.device_class
    else:
        device.online = False
    return True


def lock_devices(session: Session, *, device_ids: Iterable[str]) -> None:
    """Lock these device rows at once in id order (PostgreSQL; elsewhere a no-op): two replicas' batches touching
    the same devices then wait for each other instead of deadlocking (each statement would otherwise lock them
    in whatever order it meets them)."""
    wanted = sorted(set(device_ids))
    if wanted and session.get_bind().dialect.name == "postgresql":
        pg.execute(session, LOCK_PG, [pg.json_param(wanted)])


def apply_live(session: Session, *, updates: dict[str, dict[str, Any]], locked: bool = False) -> None:
    """Per device, the newest figures from telemetry (``LIVE_COLUMNS``; a None keeps the stored value) and
    ``ts_replaced``, how many of its timestamps were replaced: one UPDATE executed for all devices.
    The figures apply only when the message was received at or after the row's ``last_seen``: a commit report or
    a birth handled while the telemetry waited in the writer's queue is newer, and its model stays.
    ``locked``: the caller already holds the rows (``lock_devices``)."""
    if not updates:
        return
    if session.get_bind().dialect.name == "postgresql":
        if not locked:
            lock_devices(session, device_ids=updates)
        _apply_live_pg(session, updates)
        return
    table = cast(Table, Device.__table__)
    received = bindparam("v_last_seen", type_=table.c.last_seen.type)
    newer = received >= func.coalesce(table.c.last_seen, 0.0)
    values: dict[str, Any] = {
        name: case((newer, func.coalesce(bindparam(f"v_{name}", type_=table.c[name].type), table.c[name])),
                   else_=table.c[name]) for name in LIVE_COLUMNS}
    values["ts_replaced"] = table.c.ts_replaced + bindparam("v_ts_replaced")
    statement = update(table).where(table.c.id == bindparam("v_id")).values(values)
    params = [{"v_id": device_id, "v_ts_replaced": int(live.get("ts_replaced", 0)),
               **{f"v_{name}": live.get(name) for name in LIVE_COLUMNS}} for device_id, live in sorted(updates.items())]
    session.connection().execute(statement, params)


LIVE_TYPES = {"last_seen": "float8", "p95_ms": "float8", "cpu_pct": "float8", "model_name": "text",
              "model_version": "int4", "runtime": "text", "delegate": "text"}
LIVE_PG = ("UPDATE devices AS d SET " + ", ".join(
    f"{name} = CASE WHEN v.last_seen >= COALESCE(d.last_seen, 0) THEN COALESCE(v.{name}, d.{name}) ELSE d.{name} END"
    for name in LIVE_COLUMNS)
           + ", ts_replaced = d.ts_replaced + v.ts_replaced FROM json_to_recordset(%s::json) AS v(id text, "
           + "ts_replaced int8, " + ", ".join(f"{name} {LIVE_TYPES[name]}" for name in LIVE_COLUMNS)
           + ") WHERE d.id = v.id")


def _apply_live_pg(session: Session, updates: dict[str, dict[str, Any]]) -> None:
    """The same as one UPDATE … FROM json_to_recordset: the batch's devices in one parameter."""
    records = [{"id": device_id, "ts_replaced": int(live.get("ts_replaced", 0)),
                **{name: live.get(name) for name in LIVE_COLUMNS}} for device_id, live in sorted(updates.items())]
    pg.execute(session, LIVE_PG, [pg.json_param(records)])


def record_rejections(session: Session, *, rejected: dict[str, tuple[int, str, float]]) -> None:
    """Per enrolled device: (messages refused, the last reason, when), added to its counters."""
    if not rejected:
        return
    table = cast(Table, Device.__table__)
    statement = update(table).where(table.c.id == bindparam("v_id")).values(
        rejected=table.c.rejected + bindparam("v_n"), rejected_reason=bindparam("v_reason"),
        rejected_at=bindparam("v_at"))
    session.connection().execute(statement, [{"v_id": device_id, "v_n": n, "v_reason": reason, "v_at": at}
                                             for device_id, (n, reason, at) in sorted(rejected.items())])


def epoch_summary(session: Session, *, device_id: str, since: float | None = None,
                  limit: int = 20) -> list[dict[str, Any]]:
    """Per epoch of a device (newest first): stored messages (telemetry and events share one seq), the first and
    last seq and how many numbers between are missing. ``since``: only rows from then on (raw telemetry older
    than ``downsample_after_hours`` is folded into rollups, so its seqs are gone by design)."""
    parts = []
    for table, received in ((Telemetry, Telemetry.received_at), (DeviceEvent, DeviceEvent.ts)):
        part = select(table.epoch.label("epoch"), table.seq.label("seq"), received.label("received")).where(
            table.device_id == device_id)
        parts.append(part.where(table.ts >= since) if since is not None else part)
    rows = union_all(*parts).subquery()
    query = (select(rows.c.epoch, func.count(), func.min(rows.c.seq), func.max(rows.c.seq), func.max(rows.c.received))
             .group_by(rows.c.epoch).order_by(func.max(rows.c.received).desc()).limit(limit))
    return [{"epoch": int(epoch), "messages": int(count), "first_seq": int(first), "last_seq": int(last),
             "missing": int(last) - int(first) + 1 - int(count), "last_received": last_at}
            for epoch, count, first, last, last_at in session.execute(query)]


def list_telemetry(session: Session, *, device_id: str, since: float | None = None,
                   limit: int = 200) -> list[Telemetry]:
    query = select(Telemetry).where(Telemetry.device_id == device_id)
    if since is not None:
        query = query.where(Telemetry.ts >= since)
    rows = list(session.scalars(query.order_by(Telemetry.ts.desc(), Telemetry.seq.desc()).limit(limit)))
    rows.reverse()
    return rows


def list_events(session: Session, *, device_id: str, since: float | None = None,
                limit: int = 200) -> list[DeviceEvent]:
    query = select(DeviceEvent).where(DeviceEvent.device_id == device_id)
    if since is not None:
        query = query.where(DeviceEvent.ts >= since)
    rows = list(session.scalars(query.order_by(DeviceEvent.ts.desc(), DeviceEvent.seq.desc()).limit(limit)))
    rows.reverse()
    return rows


def list_rollups(session: Session, *, device_id: str, limit: int = 500) -> list[TelemetryRollup]:
    query = (select(TelemetryRollup).where(TelemetryRollup.device_id == device_id)
             .order_by(TelemetryRollup.bucket.desc()).limit(limit))
    return list(reversed(list(session.scalars(query))))


def downsample_and_expire(session: Session, *, downsample_before: float, expire_before: float) -> tuple[int, int]:
    """Fold raw rows older than ``downsample_before`` into hourly rollups, then delete them; delete rollups
    older than ``expire_before``. Returns (raw rows folded, rollups expired)."""
    bucket = func.floor(Telemetry.ts / 3600.0) * 3600.0
    grouped = (select(Telemetry.device_id, bucket.label("bucket"), func.count().label("samples"),
                      func.sum(Telemetry.count), func.sum(Telemetry.errors), func.avg(Telemetry.p95_ms),
                      func.max(Telemetry.p95_ms), func.avg(Telemetry.cpu_pct), func.max(Telemetry.model_version))
               .where(Telemetry.ts < downsample_before).group_by(Telemetry.device_id, bucket))
    folded = 0
    for device_id, start, samples, count, errors, p95, p95_max, cpu, version in session.execute(grouped):
        row = session.scalars(select(TelemetryRollup).where(TelemetryRollup.device_id == device_id,
                                                            TelemetryRollup.bucket == float(start))).first()
        if row is None:
            session.add(TelemetryRollup(device_id=device_id, bucket=float(start), samples=samples, count=count,
                                        errors=errors, p95_ms=p95, p95_max_ms=p95_max, cpu_pct=cpu,
                                        model_version=version))
        else:  # merge with a bucket folded earlier
            total = row.samples + samples
            row.p95_ms = _wmean(row.p95_ms, row.samples, p95, samples)
            row.cpu_pct = _wmean(row.cpu_pct, row.samples, cpu, samples)
            row.p95_max_ms = max(x for x in (row.p95_max_ms, p95_max, 0.0) if x is not None)
            row.count = (row.count or 0) + (count or 0)
            row.errors = (row.errors or 0) + (errors or 0)
            row.samples = total
        folded += samples
    session.execute(delete(Telemetry).where(Telemetry.ts < downsample_before))
    result: Any = session.execute(delete(TelemetryRollup).where(TelemetryRollup.bucket < expire_before))
    expired = result.rowcount
    session.execute(delete(DeviceEvent).where(DeviceEvent.ts < expire_before))
    return folded, int(expired or 0)


def _wmean(a: float | None, na: int, b: float | None, nb: int) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return (a * na + b * nb) / (na + nb)


def telemetry_public(row: Telemetry) -> dict[str, Any]:
    return {"epoch": row.epoch, "seq": row.seq, "ts": row.ts, "ts_replaced": bool(row.ts_replaced),
            "received_at": row.received_at, "model_name": row.model_name,
            "model_version": row.model_version, "runtime": row.runtime, "count": row.count, "errors": row.errors,
            "p50_ms": row.p50_ms, "p95_ms": row.p95_ms, "p99_ms": row.p99_ms, "fps": row.fps,
            "cpu_pct": row.cpu_pct, "mem_mb": row.mem_mb, "rss_mb": row.rss_mb, "temp_c": row.temp_c,
            "payload": row.payload}


def event_public(row: DeviceEvent) -> dict[str, Any]:
    return {"epoch": row.epoch, "seq": row.seq, "ts": row.ts, "ts_replaced": bool(row.ts_replaced), "type": row.type,
            "payload": row.payload}


def rollup_public(row: TelemetryRollup) -> dict[str, Any]:
    return {"bucket": row.bucket, "samples": row.samples, "count": row.count, "errors": row.errors,
            "p95_ms": row.p95_ms, "p95_max_ms": row.p95_max_ms, "cpu_pct": row.cpu_pct,
            "model_version": row.model_version}


def now() -> float:
    return time.time()

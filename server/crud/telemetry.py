"""Telemetry, events and live device state from MQTT; retention and downsampling."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.db.models import Device, DeviceEvent, Telemetry, TelemetryRollup

TELEMETRY_COLUMNS = ("device_id", "seq", "ts", "received_at", "model_name", "model_version", "runtime", "count",
                     "errors", "p50_ms", "p95_ms", "p99_ms", "fps", "cpu_pct", "mem_mb", "rss_mb", "temp_c",
                     "payload")


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
        "device_id": device_id, "seq": int(payload["seq"]), "ts": float(payload["ts"]), "received_at": received_at,
        "model_name": model.get("name"), "model_version": model.get("version"), "runtime": payload.get("runtime"),
        "count": inference.get("count"), "errors": inference.get("errors"), "p50_ms": latency.get("p50"),
        "p95_ms": latency.get("p95"), "p99_ms": latency.get("p99"), "fps": inference.get("fps"),
        "cpu_pct": system.get("cpu_pct"), "mem_mb": system.get("mem_mb"), "rss_mb": system.get("rss_mb"),
        "temp_c": system.get("temp_c"), "payload": payload,
    }


def insert_telemetry(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows; a (device_id, seq) already stored is skipped."""
    if rows:
        session.execute(_insert_ignore(session, Telemetry), list(rows))


def insert_events(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Rows with device_id, seq, ts, type, payload; duplicates skipped."""
    if rows:
        session.execute(_insert_ignore(session, DeviceEvent), list(rows))


def apply_status(session: Session, *, device_id: str, payload: dict[str, Any], now: float) -> bool:
    """A birth or will from ``status``. A will from an older session than the one recorded is ignored.
    Returns whether the device row changed."""
    session_no = int(payload.get("session", -1))
    device = session.get(Device, device_id)
    if device is None:
        device = Device(id=device_id, online=False, session=-1, desired_revert=False, tags=[], hw={})
        session.add(device)
    if session_no < (device.session if device.session is not None else -1):
        return False
    device.session = session_no
    if payload.get("online"):
        device.online = True
        device.last_seen = now
        model = payload.get("model") or {}
        device.model_name, device.model_version = model.get("name"), model.get("version")
        device.model_sha256 = model.get("sha256")
        device.runtime, device.delegate = payload.get("runtime"), payload.get("delegate")
        device.agent_version = payload.get("agent_version")
        if payload.get("device_class") and not device.device_class:
            device.device_class = payload["device_class"]
    else:
        device.online = False
    return True


def apply_live(session: Session, *, updates: dict[str, dict[str, Any]]) -> None:
    """Per device, the newest figures from telemetry (last_seen, p95, cpu, model, runtime)."""
    if not updates:
        return
    found = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(list(updates))))}
    for device_id, values in updates.items():
        device = found.get(device_id)
        if device is None:
            continue
        for key, value in values.items():
            if value is not None:
                setattr(device, key, value)


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
    return {"seq": row.seq, "ts": row.ts, "received_at": row.received_at, "model_name": row.model_name,
            "model_version": row.model_version, "runtime": row.runtime, "count": row.count, "errors": row.errors,
            "p50_ms": row.p50_ms, "p95_ms": row.p95_ms, "p99_ms": row.p99_ms, "fps": row.fps,
            "cpu_pct": row.cpu_pct, "mem_mb": row.mem_mb, "rss_mb": row.rss_mb, "temp_c": row.temp_c,
            "payload": row.payload}


def event_public(row: DeviceEvent) -> dict[str, Any]:
    return {"seq": row.seq, "ts": row.ts, "type": row.type, "payload": row.payload}


def rollup_public(row: TelemetryRollup) -> dict[str, Any]:
    return {"bucket": row.bucket, "samples": row.samples, "count": row.count, "errors": row.errors,
            "p95_ms": row.p95_ms, "p95_max_ms": row.p95_max_ms, "cpu_pct": row.cpu_pct,
            "model_version": row.model_version}


def now() -> float:
    return time.time()

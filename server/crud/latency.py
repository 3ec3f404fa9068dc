"""The fleet's per-minute latency sums (``latency_minute``): added to by the ingest writer, read by
``server/latency.py`` for fleet, version and class figures, expired with telemetry."""

from __future__ import annotations

import math
import operator
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from edgefleet.agent.latency import BUCKETS
from edgefleet.server.crud import pg
from edgefleet.server.db.models import Device, LatencyMinute

MINUTE_UPSERT = "INSERT INTO latency_minute (minute, model_name, model_version, device_class, k, n)"
MINUTE_CONFLICT = ("ON CONFLICT (minute, model_name, model_version, device_class, k) "
                   "DO UPDATE SET n = latency_minute.n + excluded.n")
Group = tuple[float, str, int, str]  # minute, model name, version, device class ('' / -1: unknown)


def device_classes(session: Session, *, device_ids: Iterable[str]) -> dict[str, str | None]:
    wanted = sorted(set(device_ids))
    out: dict[str, str | None] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start:start + 1000]
        out.update((str(i), c) for i, c in session.execute(select(Device.id, Device.device_class)
                                                              .where(Device.id.in_(chunk))))
    return out


def minute_sums(rows: Iterable[dict[str, Any]], classes: dict[str, str | None]) -> dict[tuple[Group, int], int]:
    """Latency rows (``LATENCY_COLUMNS``, ``counts`` a list) added up per (minute, model, version, class, bucket)."""
    dense: dict[Group, list[int]] = {}
    for row in rows:
        group = (math.floor(row["ts"] / 60.0) * 60.0, row["model_name"] or "",
                 -1 if row["model_version"] is None else int(row["model_version"]),
                 classes.get(row["device_id"]) or "")
        acc = dense.get(group)
        if acc is None:
            acc = dense[group] = [0] * BUCKETS
        i0, counts = row["i0"], row["counts"]
        acc[i0:i0 + len(counts)] = map(operator.add, acc[i0:i0 + len(counts)], counts)  # the loop in C
    return {(group, k): n for group, acc in dense.items() for k, n in enumerate(acc) if n}


def add_minutes(session: Session, *, sums: dict[tuple[Group, int], int]) -> None:
    """Add ``sums`` to the stored rows (an upsert per row, in key order: two replicas adding to the same rows
    wait for each other instead of deadlocking)."""
    if not sums:
        return
    if session.get_bind().dialect.name == "postgresql":
        _add_minutes_pg(session, sums)
        return
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(f"{MINUTE_UPSERT} VALUES (?, ?, ?, ?, ?, ?) {MINUTE_CONFLICT}",
                           [(g[0], g[1], g[2], g[3], k, n) for (g, k), n in sorted(sums.items())])
    except sqlite3.Error as exc:  # the same exception classes as every other statement (busy vs refused)
        raise DBAPIError.instance(MINUTE_UPSERT, None, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


MINUTES_PG = (f"{MINUTE_UPSERT} SELECT minute, model_name, model_version, device_class, k, n FROM "
              "json_to_recordset(%s::json) AS v(minute float8, model_name text, model_version int4, "
              f"device_class text, k int4, n int8) {MINUTE_CONFLICT}")


def _add_minutes_pg(session: Session, sums: dict[tuple[Group, int], int]) -> None:
    """The same as one statement over the rows as one JSON parameter: a batch's few hundred rows in one round
    trip, applied in key order (the order of the array)."""
    records = [{"minute": g[0], "model_name": g[1], "model_version": g[2], "device_class": g[3], "k": k, "n": n}
               for (g, k), n in sorted(sums.items())]
    pg.execute(session, MINUTES_PG, [pg.json_param(records)])


def read_minutes(session: Session, *, since: float, until: float, model: str | None, version: int | None,
                 device_class: str | None, group: str | None) -> dict[Any, dict[int, int]]:
    """Summed counts per bucket over the minutes starting in ``[since, until)``, grouped by ``group``
    (``model_version`` | ``device_class`` | None)."""
    table = cast(Table, LatencyMinute.__table__)
    keys: Sequence[Any] = [table.c[group]] if group else []
    query = select(*keys, table.c.k, func.sum(table.c.n)).where(table.c.minute >= since, table.c.minute < until)
    if model is not None:
        query = query.where(table.c.model_name == model)
    if version is not None:
        query = query.where(table.c.model_version == version)
    if device_class is not None:
        query = query.where(table.c.device_class == device_class)
    query = query.group_by(*keys, table.c.k)
    out: dict[Any, dict[int, int]] = {}
    for *key, k, n in session.execute(query):
        value = key[0] if key else None
        if value in (-1, "") and group is not None:
            value = None
        if n:
            hist = out.setdefault(value, {})
            hist[int(k)] = hist.get(int(k), 0) + int(n)
    return out


def expire_minutes(session: Session, *, before: float) -> int:
    result: Any = session.execute(delete(LatencyMinute).where(LatencyMinute.minute < before))
    return int(result.rowcount or 0)


__all__ = ["add_minutes", "device_classes", "expire_minutes", "minute_sums", "read_minutes"]

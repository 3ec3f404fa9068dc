"""Retention of latency histograms, with telemetry's (``telemetry.downsample_after_hours``, ``retention_days``).

Raw per-message rows older than ``downsample_before`` are merged per (device, hour, model, version) into
``latency_hist_hourly`` and deleted; hourly rows older than ``expire_before`` are deleted. Merging adds counts,
so an hourly row holds exactly the latencies of the messages it replaced: only time resolution is lost.
The fleet's per-minute sums (``latency_minute``) are kept for ``retention_days``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from edgefleet.agent import latency as buckets
from edgefleet.server.crud.latency import expire_minutes
from edgefleet.server.db.models import LatencyHistHourly, LatencyHistRow

Key = tuple[str, str, int, float]  # device, model name ('' unknown), version (-1 unknown), hour


def _raw_sums(session: Session, before: float) -> dict[Key, dict[int, int]]:
    if session.get_bind().dialect.name == "postgresql":
        unnest = "CROSS JOIN LATERAL json_array_elements_text(h.counts) WITH ORDINALITY AS e(n, ord)"
        k, n, hour = "h.i0 + e.ord - 1", "CAST(e.n AS BIGINT)", "FLOOR(h.ts / 3600.0) * 3600.0"
    else:
        unnest = ", json_each(h.counts) AS e"
        k, n, hour = "h.i0 + e.key", "e.value", "CAST(CAST(h.ts / 3600.0 AS INTEGER) * 3600 AS REAL)"
    statement = text(
        f"SELECT device_id, name, version, hour, k, SUM(n) FROM (SELECT h.device_id AS device_id, "
        f"COALESCE(h.model_name, '') AS name, COALESCE(h.model_version, -1) AS version, {hour} AS hour, "
        f"{k} AS k, {n} AS n FROM latency_hist h {unnest} WHERE h.ts < :before) AS u "
        "GROUP BY device_id, name, version, hour, k")
    sums: dict[Key, dict[int, int]] = defaultdict(dict)
    for device_id, name, version, hour, k, total in session.execute(statement, {"before": before}):
        if total and 0 <= int(k) < buckets.BUCKETS:
            sums[(str(device_id), str(name), int(version), float(hour))][int(k)] = int(total)
    return sums


def fold_and_expire(session: Session, *, downsample_before: float, expire_before: float) -> tuple[int, int]:
    """Fold raw histograms older than ``downsample_before`` into hourly rows; expire hourly rows older than
    ``expire_before``. Returns (hourly rows written or merged into, hourly rows expired)."""
    sums = _raw_sums(session, downsample_before)
    if sums:
        first_hour = min(key[3] for key in sums)
        existing = {(row.device_id, row.model_name, row.model_version, row.hour): row
                    for row in session.scalars(select(LatencyHistHourly).where(LatencyHistHourly.hour >= first_hour))}
        for key, hist in sums.items():
            row = existing.get(key)
            if row is not None:  # the hour was partly folded by an earlier run
                hist = buckets.merge([hist, buckets.decode(row.i0, _counts(row.counts))])
            i0, run = buckets.trimmed(hist)
            if row is None:
                session.add(LatencyHistHourly(device_id=key[0], model_name=key[1], model_version=key[2], hour=key[3],
                                              count=sum(run), i0=i0, counts=run))
            else:
                row.i0, row.counts, row.count = i0, run, sum(run)
        session.flush()
    session.execute(delete(LatencyHistRow).where(LatencyHistRow.ts < downsample_before))
    result: Any = session.execute(delete(LatencyHistHourly).where(LatencyHistHourly.hour < expire_before))
    expire_minutes(session, before=expire_before)
    return len(sums), int(result.rowcount or 0)


def _counts(value: Any) -> list[int]:
    return [int(n) for n in (json.loads(value) if isinstance(value, str) else value)]


__all__ = ["fold_and_expire"]

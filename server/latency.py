"""Exact merging of the devices' latency histograms (``latency_hist`` and ``latency_hist_hourly``).

Every device counts its latencies on the same fixed buckets (``agent/latency.py``), so the histogram of a
set of devices over a window is the bucket-wise sum of theirs, and its percentiles are those of all the
latencies it holds, to the buckets' 2 %. Percentiles of devices' percentiles would not be: they do not average.

- :func:`merge` and :func:`quantile` are pure (sparse ``{bucket: count}`` dicts).
- :func:`device_histograms` reads one merged histogram per device for a window (for gates and cohorts).
- :func:`version_histograms` and :func:`device_version_histograms` likewise per version, per (device, version).
- :func:`fleet_histograms` reads the fleet's per-minute sums (``latency_minute``, kept by the ingest writer):
  fleet, model, version and class figures without reading every device's messages.

The database does the unnesting and summing (PostgreSQL: ``json_array_elements_text … WITH ORDINALITY``,
SQLite: ``json_each``), so a query returns one row per (group, bucket), not one per message. A window reads
raw rows by their ``ts`` and hourly rows (older than ``telemetry.downsample_after_hours``) by the start of
their hour: an hour that begins inside ``[since, until)`` counts whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from edgefleet.agent import latency as buckets
from edgefleet.server.crud import latency as latency_crud

QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
ID_CHUNK = 1000  # device ids per query (SQLite binds at most 32766 variables)
Histogram = dict[int, int]


def merge(histograms: Iterable[Mapping[int, int]]) -> Histogram:
    """The bucket-wise sum: exactly the histogram of every latency the inputs counted."""
    return buckets.merge(histograms)


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The value (ms) of the bucket that holds the nearest-rank ``q`` quantile; None when empty."""
    return buckets.quantile(histogram, q)


def summary(histogram: Mapping[int, int]) -> dict[str, Any]:
    """count and p50/p90/p95/p99 in ms (the bucket values, within 2 % of the exact percentiles)."""
    out: dict[str, Any] = {"count": int(sum(histogram.values()))}
    for name, q in QUANTILES.items():
        out[f"{name}_ms"] = quantile(histogram, q)
    return out


@dataclass(frozen=True)
class Window:
    since: float
    until: float
    model: str | None = None
    version: int | None = None


def _sources(dialect: str, where_raw: str, where_hourly: str) -> str:
    if dialect == "postgresql":
        unnest = "CROSS JOIN LATERAL json_array_elements_text(h.counts) WITH ORDINALITY AS e(n, ord)"
        k, n = "h.i0 + e.ord - 1", "CAST(e.n AS BIGINT)"
    else:
        unnest = ", json_each(h.counts) AS e"
        k, n = "h.i0 + e.key", "e.value"
    raw = (f"SELECT h.device_id AS device_id, h.model_version AS model_version, {k} AS k, {n} AS n "
           f"FROM latency_hist h {unnest} WHERE {where_raw}")
    hourly = (f"SELECT h.device_id AS device_id, NULLIF(h.model_version, -1) AS model_version, {k} AS k, "
              f"{n} AS n FROM latency_hist_hourly h {unnest} WHERE {where_hourly}")
    return f"{raw} UNION ALL {hourly}"


def _query(session: Session, window: Window, keys: Sequence[str], device_ids: Sequence[str] | None,
           ) -> list[tuple[Any, ...]]:
    where_raw, where_hourly = ["h.ts >= :since", "h.ts < :until"], ["h.hour >= :since", "h.hour < :until"]
    params: dict[str, Any] = {"since": window.since, "until": window.until}
    if window.model is not None:
        where_raw.append("h.model_name = :model")
        where_hourly.append("h.model_name = :model")
        params["model"] = window.model
    if window.version is not None:
        where_raw.append("h.model_version = :version")
        where_hourly.append("h.model_version = :version")
        params["version"] = window.version
    if device_ids is not None:
        where_raw.append("h.device_id IN :ids")
        where_hourly.append("h.device_id IN :ids")
        params["ids"] = list(device_ids)
    dialect = session.get_bind().dialect.name
    inner = _sources(dialect, " AND ".join(where_raw), " AND ".join(where_hourly))
    group = ", ".join([*keys, "k"])
    statement = text(f"SELECT {group}, SUM(n) FROM ({inner}) AS u GROUP BY {group}")
    if device_ids is not None:
        statement = statement.bindparams(bindparam("ids", expanding=True))
    return [tuple(row) for row in session.execute(statement, params)]


def _collect(session: Session, window: Window, keys: Sequence[str], device_ids: Sequence[str] | None,
             ) -> dict[tuple[Any, ...], Histogram]:
    out: dict[tuple[Any, ...], Histogram] = {}
    chunks: Iterable[Sequence[str] | None]
    if device_ids is None:
        chunks = [None]
    else:
        wanted = sorted(set(device_ids))
        chunks = [wanted[i:i + ID_CHUNK] for i in range(0, len(wanted), ID_CHUNK)]
    for chunk in chunks:
        for *key, k, n in _query(session, window, keys, chunk):
            count = int(n or 0)
            if count and 0 <= int(k) < buckets.BUCKETS:
                hist = out.setdefault(tuple(key), {})
                hist[int(k)] = hist.get(int(k), 0) + count
    return out


def device_histograms(session: Session, device_ids: Sequence[str] | None, since: float, until: float, *,
                      model: str | None = None, version: int | None = None) -> dict[str, Histogram]:
    """One merged histogram per device over ``[since, until)`` (``device_ids`` None: every device that
    reported), optionally of one model (and version) only. Devices without latencies are left out."""
    rows = _collect(session, Window(since, until, model, version), ["device_id"], device_ids)
    return {str(key[0]): hist for key, hist in rows.items()}


def version_histograms(session: Session, device_ids: Sequence[str] | None, since: float, until: float, *,
                       model: str | None = None, version: int | None = None) -> dict[int | None, Histogram]:
    """One merged histogram per model version (None: messages that named none) over ``[since, until)``."""
    rows = _collect(session, Window(since, until, model, version), ["model_version"], device_ids)
    return {(None if key[0] is None else int(key[0])): hist for key, hist in rows.items()}


def device_version_histograms(session: Session, device_ids: Sequence[str] | None, since: float, until: float, *,
                              model: str | None = None, version: int | None = None,
                              ) -> dict[tuple[str, int | None], Histogram]:
    """One merged histogram per (device, model version) over ``[since, until)``."""
    rows = _collect(session, Window(since, until, model, version), ["device_id", "model_version"], device_ids)
    return {(str(key[0]), None if key[1] is None else int(key[1])): hist for key, hist in rows.items()}


def fleet_histograms(session: Session, since: float, until: float, *, model: str | None = None,
                     version: int | None = None, device_class: str | None = None,
                     group_by: str | None = None) -> dict[Any, Histogram]:
    """Merged histograms of the whole fleet (or one model, version, class) from the per-minute sums the ingest
    writer keeps (``latency_minute``): a few thousand rows however many devices report. Minutes that start
    inside ``[since, until)`` count whole. ``group_by``: ``version`` | ``device_class`` | None (one group, None)."""
    column = {"version": "model_version", "device_class": "device_class", None: None}[group_by]
    return latency_crud.read_minutes(session, since=since, until=until, model=model, version=version,
                                     device_class=device_class, group=column)


def wire(histogram: Mapping[int, int]) -> dict[str, int | list[int]]:
    """The contract's ``{"offset", "counts"}`` form of a histogram."""
    return buckets.encode(histogram)


__all__ = ["QUANTILES", "Histogram", "device_histograms", "device_version_histograms", "fleet_histograms", "merge",
           "quantile",
           "summary", "version_histograms", "wire"]

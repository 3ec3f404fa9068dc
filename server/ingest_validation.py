"""One MQTT message from a device, checked against the wire contract (``agent/wire.py``) and turned into a row.

Every message is untrusted: it is parsed and validated in one pass by pydantic-core (UTF-8, lone
surrogates, NaN/inf, nesting past 200 levels and every field bound of the wire models fail there), after a
size check on the raw bytes. What fails becomes a :class:`Rejected` with a reason label for
``edgefleet_ingest_rejected_total{reason}`` and one line of detail; nothing of it reaches the database.

Timestamps outside ``[received_at - retention, received_at + future_skew_s]`` are replaced by the receive
time and flagged (``ts_replaced``). The stored payload is the text the device sent, once it passed: every
field of the contract checked, fields the contract does not name kept as sent (a newer agent's), within
the size limit and the parser's nesting limit, valid UTF-8; duplicate keys resolve to the last one in the
parser, ``json.loads`` and PostgreSQL's ``->`` alike. Re-serializing the model would double the cost of
validation for nothing the columns do not already hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from edgefleet.agent import latency
from edgefleet.agent.wire import Birth, Event, Telemetry, Will

REASONS = ("too_large", "not_json", "too_deep", "out_of_range", "invalid", "unenrolled", "refused_by_database")
DETAIL_MAX = 240
_RANGE_ERRORS = {"less_than", "less_than_equal", "greater_than", "greater_than_equal", "finite_number",
                 "int_from_float", "int_parsing_size"}
_SIZE_ERRORS = {"string_too_long", "too_long", "too_large"}

StatusDoc = TypeAdapter(Annotated[Birth | Will, Field(discriminator="online")])


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # one of REASONS
    detail: str  # one line, without the offending value


@dataclass(slots=True)
class Accepted:
    device_id: str
    leaf: str  # telemetry | events | status
    received_at: float
    row: dict[str, Any] | None = None  # a telemetry or events row
    latency: dict[str, Any] | None = None  # telemetry with latencies: its latency_hist row
    status: Birth | Will | None = None
    delegate: str | None = None  # telemetry: kept on the device row, not in the telemetry table


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    retention_s: float
    future_skew_s: float


def _reason(leaf: str, exc: ValidationError) -> Rejected:
    first = exc.errors(include_url=False, include_input=False)[0]
    kind = str(first["type"])
    message = str(first["msg"])
    if kind == "json_invalid":
        reason = "too_deep" if "recursion limit" in message else "not_json"
    elif kind == "too_deep":
        reason = "too_deep"
    elif kind in _RANGE_ERRORS:
        reason = "out_of_range"
    elif kind in _SIZE_ERRORS:
        reason = "too_large"
    else:
        reason = "invalid"
    where = ".".join(str(part) for part in first["loc"]) or "body"
    detail = f"{leaf}: {where}: {message}".replace("\n", " ")
    return Rejected(reason, detail[:DETAIL_MAX])


def _timestamp(ts: float, received_at: float, limits: Limits) -> tuple[float, bool]:
    if received_at - limits.retention_s <= ts <= received_at + limits.future_skew_s:
        return ts, False
    return received_at, True


def check(device_id: str, leaf: str, payload: bytes, received_at: float, limits: Limits) -> Accepted | Rejected:
    """Validate one message of ``leaf`` (telemetry, events, status) and build its row."""
    if len(payload) > limits.max_bytes:
        return Rejected("too_large", f"{leaf}: {len(payload)} bytes, over the limit of {limits.max_bytes}")
    try:
        if leaf == "telemetry":
            telemetry = Telemetry.model_validate_json(payload)
            row = telemetry_row(device_id, telemetry, received_at, limits, payload.decode())
            return Accepted(device_id, leaf, received_at, row=row, delegate=telemetry.delegate,
                            latency=latency_row(telemetry, row))
        if leaf == "events":
            event = Event.model_validate_json(payload)
            ts, replaced = _timestamp(event.ts, received_at, limits)
            return Accepted(device_id, leaf, received_at, row={
                "device_id": device_id, "epoch": event.epoch, "seq": event.seq, "ts": ts, "ts_replaced": replaced,
                "type": event.type, "payload": payload.decode()})
        if leaf == "status":
            return Accepted(device_id, leaf, received_at, status=StatusDoc.validate_json(payload))
    except ValidationError as exc:
        return _reason(leaf, exc)
    return Rejected("invalid", f"{leaf}: not a topic the server reads")


def telemetry_row(device_id: str, doc: Telemetry, received_at: float, limits: Limits, text: str) -> dict[str, Any]:
    ts, replaced = _timestamp(doc.ts, received_at, limits)
    inference, latency, system, model = doc.inference, doc.inference.latency_ms, doc.system, doc.model
    return {
        "device_id": device_id, "epoch": doc.epoch, "seq": doc.seq, "ts": ts, "ts_replaced": replaced,
        "received_at": received_at, "model_name": model.name, "model_version": model.version,
        "runtime": doc.runtime, "count": inference.count, "errors": inference.errors, "p50_ms": latency.p50,
        "p95_ms": latency.p95, "p99_ms": latency.p99, "fps": inference.fps, "cpu_pct": system.cpu_pct,
        "mem_mb": system.mem_mb, "rss_mb": system.rss_mb, "temp_c": system.temp_c,
        "payload": text,
    }


def latency_row(doc: Telemetry, row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``latency_hist`` row of a validated message (zeros trimmed), or None when it timed nothing."""
    hist = doc.inference.latency_hist
    if hist is None:
        return None
    counts, i0 = hist.counts, hist.offset
    if not (counts and counts[0] and counts[-1]):  # what the agent sends is trimmed already
        if not any(counts):
            return None
        lead, counts = latency.trimmed(counts)
        i0 += lead
    return {"device_id": row["device_id"], "epoch": row["epoch"], "seq": row["seq"], "ts": row["ts"],
            "model_name": row["model_name"], "model_version": row["model_version"], "count": sum(counts), "i0": i0,
            "counts": counts}


def unchecked(device_id: str, leaf: str, payload: bytes, received_at: float) -> Accepted | Rejected:
    """The same rows without the contract (what ingestion cost before validation): only for the benchmark's
    baseline (``benchmarks/ingest_rate.py``); never used by the server."""
    try:
        document = json.loads(payload)
        if leaf == "telemetry":
            inference = document.get("inference") or {}
            latency = inference.get("latency_ms") or {}
            system = document.get("system") or {}
            model = document.get("model") or {}
            return Accepted(device_id, leaf, received_at, delegate=document.get("delegate"), row={
                "device_id": device_id, "epoch": int(document.get("epoch", 0)), "seq": int(document["seq"]),
                "ts": float(document["ts"]), "ts_replaced": False, "received_at": received_at,
                "model_name": model.get("name"), "model_version": model.get("version"),
                "runtime": document.get("runtime"), "count": inference.get("count"),
                "errors": inference.get("errors"), "p50_ms": latency.get("p50"), "p95_ms": latency.get("p95"),
                "p99_ms": latency.get("p99"), "fps": inference.get("fps"), "cpu_pct": system.get("cpu_pct"),
                "mem_mb": system.get("mem_mb"), "rss_mb": system.get("rss_mb"), "temp_c": system.get("temp_c"),
                "payload": payload.decode()})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Rejected("invalid", f"{leaf}: {type(exc).__name__}")
    return check(device_id, leaf, payload, received_at, Limits(1 << 30, float("inf"), float("inf")))

"""What the latency-gate tests put in a database: telemetry with a p95, and a device's committed report."""

from __future__ import annotations

from typing import Any

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import rollouts, telemetry
from edgefleet.server.db import Database


def latency_sample(device_id: str, seq: int, ts: float, version: int, p95: float, *, model: str) -> dict[str, Any]:
    """A telemetry row of ``model`` ``version`` at ``ts`` whose latency p95 is ``p95`` ms."""
    return telemetry.telemetry_row(device_id, {"seq": seq, "ts": ts, "model": {"name": model, "version": version},
                                               "inference": {"latency_ms": {"p95": p95}}}, ts)


def report_committed(db: Database, device_id: str, version: int, now: float, *, model: str) -> None:
    """The device reports ``model`` ``version`` committed at ``now``, as the report writer applies it."""
    with db.session() as s:
        device = device_crud.get_device(s, device_id=device_id)
        rollouts.record_report(s, device=device, report=UpdateReport(state="committed", model=model, version=version),
                               now=now)

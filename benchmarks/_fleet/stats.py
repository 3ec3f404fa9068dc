"""Counters and samples a worker keeps, and percentiles over them."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``p`` in 0..100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {"count": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
            "p99_ms": percentile(values, 99), "max_ms": max(values) if values else None}


@dataclass
class WorkerStats:
    """Everything the devices of one worker process did; sent to the coordinator as plain data."""

    enrolled: int = 0
    connected: int = 0  # MQTT sessions up now
    connects: int = 0  # MQTT sessions opened, reconnects included
    checkins: Counter[int] = field(default_factory=Counter)  # by HTTP status
    telemetry_sent: int = 0
    events_sent: int = 0
    reports_sent: int = 0  # answered (204, or a final 4xx)
    reports_acked: int = 0  # answered 204
    reports_given_up: int = 0  # never answered within the patience
    downloads: int = 0
    pushes: int = 0  # check_update commands received
    push_t: array[float] = field(default_factory=lambda: array("d"))  # wall time each was received
    fetched: set[str] = field(default_factory=set)  # devices that got a manifest (200) at least once
    running: Counter[int] = field(default_factory=Counter)  # devices by model version they serve
    outcomes: Counter[str] = field(default_factory=Counter)  # committed / rolled_back / rejected
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    # check-in samples: wall time sent, latency in ms, status
    checkin_t: array[float] = field(default_factory=lambda: array("d"))
    checkin_ms: array[float] = field(default_factory=lambda: array("d"))
    checkin_status: array[int] = field(default_factory=lambda: array("H"))
    checkin_queued_ms: array[float] = field(default_factory=lambda: array("d"))  # part spent in the client's pool
    publish_ms: array[float] = field(default_factory=lambda: array("d"))  # telemetry QoS 1 PUBACK time
    loop_lag_ms: array[float] = field(default_factory=lambda: array("d"))
    # per device: the seqs the broker acknowledged (PUBACK), and the state of the last report answered 204
    acked_seqs: dict[str, dict[str, array[int]]] = field(default_factory=lambda: {"telemetry": {}, "events": {}})
    last_report: dict[str, str] = field(default_factory=dict)

    def acked(self, kind: str, device_id: str, seq: int) -> None:
        self.acked_seqs[kind].setdefault(device_id, array("q")).append(seq)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {detail}"[:300])

    def progress(self) -> dict[str, Any]:
        return {"enrolled": self.enrolled, "connected": self.connected, "connects": self.connects,
                "checkins": sum(self.checkins.values()), "telemetry_sent": self.telemetry_sent,
                "events_sent": self.events_sent, "reports_sent": self.reports_sent, "downloads": self.downloads,
                "reports_acked": self.reports_acked, "reports_given_up": self.reports_given_up,
                "pushes": self.pushes, "fetched": len(self.fetched),
                "running": dict(self.running), "outcomes": dict(self.outcomes), "errors": dict(self.errors),
                "error_samples": list(self.error_samples)}

    def final(self) -> dict[str, Any]:
        doc = self.progress()
        doc.update(checkin_t=self.checkin_t.tolist(), checkin_ms=self.checkin_ms.tolist(),
                   checkin_status=self.checkin_status.tolist(),
                   checkin_queued_ms=self.checkin_queued_ms.tolist(), publish_ms=self.publish_ms.tolist(),
                   loop_lag_ms=self.loop_lag_ms.tolist(), push_t=self.push_t.tolist(),
                   checkins_by_status=dict(self.checkins), last_report=dict(self.last_report),
                   acked_seqs={kind: {d: seqs.tolist() for d, seqs in by_device.items()}
                               for kind, by_device in self.acked_seqs.items()})
        return doc

"""Body of ``GET /v1/latency``: merged latency percentiles of a set of devices over a window."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgefleet.server.api.public import Public, Timestamp


class LatencyBuckets(Public):
    """The merged counts on the wire contract's buckets (docs/telemetry.md "Latency histogram"):
    ``counts[j]`` latencies fell in bucket ``offset + j``."""

    offset: int
    counts: list[int]


class LatencyFigures(Public):
    version: int | None = Field(default=None, description="group_by=version: the model version (null: none named)")
    device_class: str | None = Field(default=None, description="group_by=device_class: the class (null: none)")
    count: int = Field(description="latencies merged")
    devices: int | None = Field(description="devices that reported latencies in the window (with tag or device_id; "
                                            "null when read from the fleet's per-minute sums)")
    p50_ms: float | None = Field(description="value of the bucket holding the percentile (within 2 %)")
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    buckets: LatencyBuckets | None = Field(default=None, description="with buckets=true")


class LatencyReport(Public):
    since: Timestamp
    until: Timestamp
    alpha: float = Field(description="relative error bound of the buckets")
    group_by: Literal["version", "device_class"] | None
    total: LatencyFigures = Field(description="every matching device merged")
    groups: list[LatencyFigures] = Field(description="one entry per group (empty without group_by)")

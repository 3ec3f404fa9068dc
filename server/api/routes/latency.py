"""``GET /v1/latency``: fleet, version, class and cohort percentiles, merged exactly from device histograms."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select

from agent import latency as buckets
from server import latency
from server.api.deps import AdminDep, SessionDep
from server.api.errors import problems
from server.api.public.latency import LatencyReport
from server.api.routing import ContractRoute
from server.db.models import Device

router = APIRouter(tags=["telemetry"], route_class=ContractRoute)
DEFAULT_WINDOW_S = 3600.0


def _device_classes(session: Any, *, device_class: str | None, tag: str | None,
                    device_id: list[str] | None) -> dict[str, str | None]:
    query = select(Device.id, Device.device_class, Device.tags)
    if device_class is not None:
        query = query.where(Device.device_class == device_class)
    if device_id:
        query = query.where(Device.id.in_(device_id))
    return {str(i): c for i, c, tags in session.execute(query) if tag is None or tag in (tags or [])}


def _figures(hist: dict[int, int], devices: int, with_buckets: bool, **key: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**key, **latency.summary(hist), "devices": devices}
    if with_buckets:
        out["buckets"] = latency.wire(hist)
    return out


@router.get("/v1/latency", dependencies=[AdminDep], operation_id="latency.get", response_model=LatencyReport,
            responses=problems(401, 403, 422))
def get_latency(session: SessionDep,
                model: Annotated[str | None, Query(max_length=128)] = None,
                version: Annotated[int | None, Query(ge=0)] = None,
                device_class: Annotated[str | None, Query(max_length=64)] = None,
                tag: Annotated[str | None, Query(max_length=64)] = None,
                device_id: Annotated[list[str] | None, Query(max_length=10_000)] = None,
                since: Annotated[float | None, Query(description="UNIX seconds; default: an hour before until")] = None,
                until: Annotated[float | None, Query(description="UNIX seconds; default: now")] = None,
                group_by: Annotated[Literal["version", "device_class"] | None, Query()] = None,
                buckets_: Annotated[bool, Query(alias="buckets", description="include the merged counts")] = False,
                ) -> dict[str, Any]:
    """Merged count and p50/p90/p95/p99 of the devices that match every filter (model, version, class, tag,
    ids), over ``[since, until)``: the histograms are added bucket by bucket, so the percentiles are those of all
    their latencies to the buckets' 2 %. Windows older than ``telemetry.downsample_after_hours`` read hourly
    merges: an hour that starts inside the window counts whole."""
    end = time.time() if until is None else until
    start = end - DEFAULT_WINDOW_S if since is None else since
    if not start < end:
        raise HTTPException(422, "since must be before until")
    filtered = device_class is not None or tag is not None or bool(device_id)
    classes = _device_classes(session, device_class=device_class, tag=tag, device_id=device_id) \
        if filtered or group_by == "device_class" else None
    ids = sorted(classes) if filtered and classes is not None else None
    per_device: dict[tuple[str, int | None], dict[int, int]] = {}
    if ids is None or ids:
        per_device = latency.device_version_histograms(session, ids, start, end, model=model, version=version)
    merged: dict[Any, list[dict[int, int]]] = defaultdict(list)
    devices: dict[Any, set[str]] = defaultdict(set)
    for (device, device_version), hist in per_device.items():
        group: Any = None
        if group_by == "version":
            group = device_version
        elif group_by == "device_class":
            group = (classes or {}).get(device)
        merged[group].append(hist)
        devices[group].add(device)
    total = latency.merge(h for hists in merged.values() for h in hists)
    everyone = {d for ds in devices.values() for d in ds}
    groups = []
    if group_by is not None:
        key_name = "version" if group_by == "version" else "device_class"
        for group in sorted(merged, key=lambda g: (g is None, g)):
            groups.append(_figures(latency.merge(merged[group]), len(devices[group]), buckets_, **{key_name: group}))
    return {"since": start, "until": end, "alpha": buckets.ALPHA, "group_by": group_by,
            "total": _figures(total, len(everyone), buckets_), "groups": groups}

"""``GET /v1/latency``: fleet, version, class and cohort percentiles, merged exactly from device histograms."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select

from edgefleet.agent import latency as buckets
from edgefleet.server import latency
from edgefleet.server.api.deps import AdminDep, SessionDep
from edgefleet.server.api.errors import problems
from edgefleet.server.api.public.latency import LatencyReport
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.db.models import Device

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


def _figures(hist: dict[int, int], devices: int | None, with_buckets: bool, **key: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**key, **latency.summary(hist), "devices": devices}
    if with_buckets:
        out["buckets"] = latency.wire(hist)
    return out


@router.get("/v1/latency", dependencies=[AdminDep], operation_id="latency.get", response_model=LatencyReport,
            responses=problems(401, 403, 422, 431))
def get_latency(session: SessionDep,
                model: Annotated[str | None, Query(max_length=128)] = None,
                version: Annotated[int | None, Query(ge=0)] = None,
                device_class: Annotated[str | None, Query(max_length=64)] = None,
                tag: Annotated[str | None, Query(max_length=64)] = None,
                device_id: Annotated[list[str] | None, Query(max_length=1_000)] = None,
                since: Annotated[float | None, Query(description="UNIX seconds; default: an hour before until")] = None,
                until: Annotated[float | None, Query(description="UNIX seconds; default: now")] = None,
                group_by: Annotated[Literal["version", "device_class"] | None, Query()] = None,
                buckets_: Annotated[bool, Query(alias="buckets", description="include the merged counts")] = False,
                ) -> dict[str, Any]:
    """Merged count and p50/p90/p95/p99 of the devices that match every filter (model, version, class, tag,
    ids), over ``[since, until)``: the histograms are added bucket by bucket, so the percentiles are those of all
    their latencies to the buckets' 2 %. Without ``tag`` or ``device_id`` the figures come from the fleet's
    per-minute sums (a minute that starts inside the window counts whole; ``devices`` is null); with them, from
    the devices' own histograms (older than ``telemetry.downsample_after_hours``: hourly merges, an hour that
    starts inside the window counts whole)."""
    end = time.time() if until is None else until
    start = end - DEFAULT_WINDOW_S if since is None else since
    if not start < end:
        raise HTTPException(422, "since must be before until")
    doc: dict[str, Any] = {"since": start, "until": end, "alpha": buckets.ALPHA, "group_by": group_by}
    key_name = "version" if group_by == "version" else "device_class"
    if tag is None and not device_id:  # the fleet, a model, version or class: the per-minute sums
        groups = latency.fleet_histograms(session, start, end, model=model, version=version,
                                          device_class=device_class, group_by=group_by)
        doc["total"] = _figures(latency.merge(groups.values()), None, buckets_)
        doc["groups"] = [_figures(groups[g], None, buckets_, **{key_name: g}) for g in _ordered(groups)] \
            if group_by is not None else []
        return doc
    classes = _device_classes(session, device_class=device_class, tag=tag, device_id=device_id)
    per_device = latency.device_version_histograms(session, sorted(classes), start, end, model=model,
                                                   version=version) if classes else {}
    merged: dict[Any, list[dict[int, int]]] = defaultdict(list)
    devices: dict[Any, set[str]] = defaultdict(set)
    for (device, device_version), hist in per_device.items():
        group = device_version if group_by == "version" else classes.get(device) if group_by else None
        merged[group].append(hist)
        devices[group].add(device)
    doc["total"] = _figures(latency.merge(h for hists in merged.values() for h in hists),
                            len({d for ds in devices.values() for d in ds}), buckets_)
    doc["groups"] = [_figures(latency.merge(merged[g]), len(devices[g]), buckets_, **{key_name: g})
                     for g in _ordered(merged)] if group_by is not None else []
    return doc


def _ordered(groups: Any) -> list[Any]:
    return sorted(groups, key=lambda g: (g is None, g))

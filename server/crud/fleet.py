"""Fleet-wide aggregates for the dashboard and /metrics (read-only, keyword-only, no HTTP)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from edgefleet.server.db.models import Device, Rollout, RolloutDevice, Telemetry


def online_counts(session: Session) -> tuple[int, int]:
    """(online, offline) over every device row (enrolled or only seen on MQTT)."""
    counts = dict(session.execute(select(Device.online, func.count()).group_by(Device.online)).tuples().all())
    return int(counts.get(True, 0)), int(counts.get(False, 0))


def versions_in_field(session: Session, *, limit: int = 500) -> list[tuple[str, int | None, int, int]]:
    """(model, version, devices, online devices) of what devices report running, most devices first."""
    online = func.sum(case((Device.online.is_(True), 1), else_=0))
    query = (select(Device.model_name, Device.model_version, func.count(), online)
             .where(Device.model_name.is_not(None))
             .group_by(Device.model_name, Device.model_version)
             .order_by(Device.model_name, Device.model_version).limit(limit))
    return [(str(name), version, int(count), int(up or 0)) for name, version, count, up in session.execute(query)]


def latest_drift(session: Session, *, device_ids: Sequence[str]) -> dict[str, Any]:
    """Per device, the ``drift`` section of its newest telemetry message (devices without one are left out).

    One query; each device costs one seek on the (device_id, ts) index."""
    if not device_ids:
        return {}
    newest = (select(Telemetry.payload["drift"]).where(Telemetry.device_id == Device.id)
              .order_by(Telemetry.ts.desc(), Telemetry.seq.desc()).limit(1).correlate(Device).scalar_subquery())
    rows = session.execute(select(Device.id, newest).where(Device.id.in_(list(device_ids))))
    return {device_id: drift for device_id, drift in rows if isinstance(drift, dict) and drift}


def device_rollouts(session: Session, *, device_id: str, limit: int = 20) -> list[tuple[RolloutDevice, Rollout]]:
    """The rollouts that include a device, newest first, with the device's row in each."""
    query = (select(RolloutDevice, Rollout).join(Rollout, Rollout.id == RolloutDevice.rollout_id)
             .where(RolloutDevice.device_id == device_id).order_by(Rollout.id.desc()).limit(limit))
    return [(row, rollout) for row, rollout in session.execute(query).tuples()]


def visible_rollouts(session: Session, *, finished_since: float, limit: int = 50) -> list[Rollout]:
    """Running and paused rollouts, plus those that finished after ``finished_since``; newest first."""
    query = (select(Rollout).where(or_(Rollout.state.in_(("running", "paused")), Rollout.updated_at >= finished_since))
             .order_by(Rollout.id.desc()).limit(limit))
    return list(session.scalars(query))


def rollout_device_states(session: Session, *, rollout_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per rollout, how many of its devices are in each state."""
    if not rollout_ids:
        return {}
    query = (select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
             .where(RolloutDevice.rollout_id.in_(list(rollout_ids)))
             .group_by(RolloutDevice.rollout_id, RolloutDevice.state))
    found: dict[int, dict[str, int]] = {}
    for rollout_id, state, count in session.execute(query):
        found.setdefault(int(rollout_id), {})[str(state)] = int(count)
    return found


def search_devices(session: Session, *, query: str = "", limit: int = 500) -> tuple[list[Device], int]:
    """Devices whose id, class or model name contains ``query`` (all when empty), by id; and how many match."""
    listing = select(Device).order_by(Device.id)
    if query:
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        listing = listing.where(or_(Device.id.like(like, escape="\\"), Device.device_class.like(like, escape="\\"),
                                    Device.model_name.like(like, escape="\\")))
    matching = session.scalar(select(func.count()).select_from(listing.subquery())) or 0
    return list(session.scalars(listing.limit(limit))), int(matching)

"""The telemetry a rollout's latency gate judges (server/latency_gate.py), a few aggregate queries per tick.

- updated: committed devices of the waves so far, their p95s with the rollout's version since they committed
  (``RolloutDevice.updated_at``, which a committed row keeps) plus the warm-up;
- control: the rollout's devices not yet updated (pending, or still installing) that reported with one of the
  versions the updated devices ran before since ``baseline_s`` before the first assignment, their p95s since
  the earliest window of an updated device;
- paired (only when a class is judged relative or paired): the raw p95s of up to ``PAIRED_MAX_DEVICES``
  updated devices before their assignment (``baseline_s``) and after their commit plus the warm-up, and for
  a relative class as many control devices' before the earliest of those assignments and in the window.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from edgefleet.server.crud.rollouts import IN_FLIGHT
from edgefleet.server.db.models import Device, Model, ModelVersion, Rollout, RolloutDevice, Telemetry
from edgefleet.server.latency_gate import DeviceWindow, LatencyData, LatencySettings, PairedDevice, split_classes

PAIRED_MAX_DEVICES = 50  # the most recently committed; a sample is enough and keeps the fetch small
PAIRED_MAX_MESSAGES = 200  # per device and window, the newest


def _versions(session: Session, version_ids: set[int]) -> list[tuple[str, int]]:
    if not version_ids:
        return []
    rows = session.execute(select(Model.name, ModelVersion.version).join(Model, Model.id == ModelVersion.model_id)
                           .where(ModelVersion.id.in_(version_ids)))
    return [(str(name), int(version)) for name, version in rows]


def _is_one_of(versions: list[tuple[str, int]]) -> Any:
    return or_(*[and_(Telemetry.model_name == name, Telemetry.model_version == version) for name, version in versions])


def latency_data(session: Session, *, rollout: Rollout, settings: LatencySettings) -> LatencyData:
    version = session.get(ModelVersion, rollout.version_id)
    model = session.get(Model, version.model_id) if version is not None else None
    if version is None or model is None:
        return LatencyData()
    new = (model.name, version.version)
    mine = and_(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave <= rollout.current_wave)
    committed = and_(mine, RolloutDevice.state == "committed")
    since_commit = RolloutDevice.updated_at + settings.warmup_s
    p95 = Telemetry.p95_ms.is_not(None)
    stats = {device_id: (float(mean), int(count)) for device_id, mean, count in session.execute(
        select(RolloutDevice.device_id, func.avg(Telemetry.p95_ms), func.count())
        .join(Telemetry, Telemetry.device_id == RolloutDevice.device_id)
        .where(committed, p95, Telemetry.model_name == new[0], Telemetry.model_version == new[1],
               Telemetry.ts >= since_commit)
        .group_by(RolloutDevice.device_id)) if mean is not None}
    # every committed device counts, those without messages in their window yet too (the gate waits for them)
    updated = [DeviceWindow(device_id, device_class, *stats.get(device_id, (0.0, 0)))
               for device_id, device_class in session.execute(
                   select(RolloutDevice.device_id, Device.device_class)
                   .join(Device, Device.id == RolloutDevice.device_id).where(committed))]
    previous = _versions(session, {int(v) for v in session.scalars(  # type: ignore[arg-type]
        select(RolloutDevice.previous_version_id).where(committed, RolloutDevice.previous_version_id.is_not(None))
        .distinct())} - {rollout.version_id})
    control: list[DeviceWindow] = []
    window_start = session.scalar(select(func.min(since_commit)).where(committed))
    reference = session.scalar(select(func.min(RolloutDevice.assigned_at)).where(committed))
    not_updated = and_(RolloutDevice.rollout_id == rollout.id, RolloutDevice.state.in_(("pending", *IN_FLIGHT)))
    if previous and window_start is not None:
        active_since = float(reference if reference is not None else window_start) - settings.baseline_s
        window = {device_id: (float(mean), int(count)) for device_id, mean, count in session.execute(
            select(RolloutDevice.device_id, func.avg(Telemetry.p95_ms), func.count())
            .join(Telemetry, Telemetry.device_id == RolloutDevice.device_id)
            .where(not_updated, p95, _is_one_of(previous), Telemetry.ts >= window_start)
            .group_by(RolloutDevice.device_id)) if mean is not None}
        # the control: devices not yet updated that report with a previous version (recently: an offline box
        # is not waited for), with or without messages in the window yet
        control = [DeviceWindow(device_id, device_class, *window.get(device_id, (0.0, 0)))
                   for device_id, device_class in session.execute(
                       select(RolloutDevice.device_id, Device.device_class)
                       .join(Device, Device.id == RolloutDevice.device_id)
                       .join(Telemetry, Telemetry.device_id == RolloutDevice.device_id)
                       .where(not_updated, p95, _is_one_of(previous), Telemetry.ts >= active_since)
                       .group_by(RolloutDevice.device_id, Device.device_class))]
    if previous and reference is not None:
        updated = _with_baselines(session, updated, settings, previous, and_(
            committed, Telemetry.ts >= RolloutDevice.assigned_at - settings.baseline_s,
            Telemetry.ts < RolloutDevice.assigned_at))
        control = _with_baselines(session, control, settings, previous, and_(
            not_updated, Telemetry.ts >= float(reference) - settings.baseline_s, Telemetry.ts < float(reference)))
    reporting = bool(control) or any(w.samples for w in updated) or session.scalar(
        select(Telemetry.id).join(RolloutDevice, RolloutDevice.device_id == Telemetry.device_id)
        .where(mine, p95, Telemetry.ts >= rollout.created_at - settings.baseline_s).limit(1)) is not None
    data = LatencyData(updated=updated, control=control, reporting=reporting)
    split = split_classes(settings, data)
    classes = split.relative | split.paired
    if not classes:
        return data
    if not previous:
        return LatencyData(updated=updated, control=control, reporting=reporting, paired=[], control_paired=[])
    members = {w.device_id for w in updated if w.device_class in classes}
    paired = _paired(session, rollout=rollout, members=members, new=new, previous=previous, settings=settings)
    control_paired: list[PairedDevice] = []
    if split.relative and window_start is not None:
        controls = sorted(w.device_id for w in control if w.device_class in split.relative)[:PAIRED_MAX_DEVICES]
        end = float(reference) if reference is not None else float(window_start)
        control_paired = [PairedDevice(device_id, _values(session, device_id, _is_one_of(previous),
                                                          end - settings.baseline_s, end),
                                       _values(session, device_id, _is_one_of(previous), float(window_start), None))
                          for device_id in controls]
    return LatencyData(updated=updated, control=control, reporting=reporting, paired=paired,
                       control_paired=control_paired)


def _with_baselines(session: Session, windows: list[DeviceWindow], settings: LatencySettings,
                    previous: list[tuple[str, int]], where: Any) -> list[DeviceWindow]:
    """The windows with each device's pre-update mean p95 (``where`` picks its rows and window)."""
    if not windows:
        return windows
    baselines = {device_id: float(mean) for device_id, mean, count in session.execute(
        select(RolloutDevice.device_id, func.avg(Telemetry.p95_ms), func.count())
        .join(Telemetry, Telemetry.device_id == RolloutDevice.device_id)
        .where(where, Telemetry.p95_ms.is_not(None), _is_one_of(previous))
        .group_by(RolloutDevice.device_id)) if mean is not None and count >= settings.min_samples}
    return [DeviceWindow(w.device_id, w.device_class, w.mean_ms, w.samples, baselines.get(w.device_id))
            for w in windows]


def _values(session: Session, device_id: str, version: Any, start: float, end: float | None) -> tuple[float, ...]:
    """The newest ``PAIRED_MAX_MESSAGES`` p95s of a device with ``version`` in [start, end)."""
    query = select(Telemetry.p95_ms).where(Telemetry.device_id == device_id, Telemetry.p95_ms.is_not(None), version,
                                           Telemetry.ts >= start)
    if end is not None:
        query = query.where(Telemetry.ts < end)
    rows = session.scalars(query.order_by(Telemetry.ts.desc()).limit(PAIRED_MAX_MESSAGES))
    return tuple(float(v) for v in rows if v is not None)


def _paired(session: Session, *, rollout: Rollout, members: set[str], new: tuple[str, int],
            previous: list[tuple[str, int]], settings: LatencySettings) -> list[PairedDevice]:
    rows = list(session.execute(
        select(RolloutDevice.device_id, RolloutDevice.assigned_at, RolloutDevice.updated_at)
        .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.device_id.in_(members))
        .order_by(RolloutDevice.updated_at.desc(), RolloutDevice.device_id).limit(PAIRED_MAX_DEVICES)))
    out: list[PairedDevice] = []
    for device_id, assigned_at, committed_at in rows:
        if assigned_at is None or committed_at is None:
            continue
        new_version = and_(Telemetry.model_name == new[0], Telemetry.model_version == new[1])
        out.append(PairedDevice(device_id, _values(session, device_id, _is_one_of(previous),
                                                   assigned_at - settings.baseline_s, assigned_at),
                                _values(session, device_id, new_version, committed_at + settings.warmup_s, None)))
    return out


__all__ = ["PAIRED_MAX_DEVICES", "latency_data"]

"""Rollouts: targets, waves, per-device state, priority conflicts, reports, revert."""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.crud import Conflict, Invalid, NotFound
from edgefleet.server.crud.devices import set_desired
from edgefleet.server.db.models import Device, Model, ModelVersion, Rollout, RolloutDevice, Telemetry
from edgefleet.server.push import note_push

ACTIVE = ("running", "paused")
FAILED_STATES = ("rolled_back", "rejected", "failed")
NOT_COUNTED = ("pending", "superseded")
IN_FLIGHT = ("assigned", "idle", "downloading", "verifying", "installing", "trial")
NOT_FETCHED = ("assigned", "idle", "downloading")  # the server's part of the update (check-in, download) ahead


def target_matches(target: dict[str, Any], device: Device) -> bool:
    """Whether a device meets every criterion a target gives: one of its ids, one of its tags, its class."""
    ids, tags, device_class = target.get("device_ids"), target.get("tags"), target.get("device_class")
    if not ids and not tags and not device_class:
        return False
    return ((not ids or device.id in ids) and (not device_class or device.device_class == device_class)
            and (not tags or bool(set(tags) & set(device.tags or []))))


def resolve_target(session: Session, *, target: dict[str, Any]) -> list[Device]:
    """Enrolled devices matching every criterion given: ids, any of the tags, class."""
    ids = target.get("device_ids")
    if not ids and not target.get("tags") and not target.get("device_class"):
        raise Invalid("target needs device_ids, tags or device_class")
    query = select(Device).where(Device.token_hash.is_not(None)).order_by(Device.id)
    if ids:
        query = query.where(Device.id.in_(ids))
    enrolled = list(session.scalars(query))
    devices = [d for d in enrolled if target_matches(target, d)]
    if ids:
        missing = sorted(set(ids) - {d.id for d in enrolled})
        if missing:
            raise Invalid(f"target names devices that are not enrolled: {', '.join(missing[:5])}")
    if not devices:
        raise Invalid("the target matches no enrolled device")
    return devices


def wave_counts(spec: Any, total: int) -> list[int]:
    """Cumulative device counts per wave from percents ``[1, 10, 50, 100]`` or ``{"counts": [1, 5, 20]}``
    (counts are cumulative too); each wave has at least one more device than the one before."""
    if isinstance(spec, dict):
        raw = spec.get("counts")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, int) and c > 0 for c in raw):
            raise Invalid("waves.counts must be a non-empty list of positive integers")
        wanted = [min(c, total) for c in raw]
    elif isinstance(spec, list) and spec and all(isinstance(p, int | float) and 0 < p <= 100 for p in spec):
        wanted = [max(1, math.ceil(p * total / 100.0 - 1e-9)) for p in spec]
    else:
        raise Invalid("waves must be a list of percents in (0, 100] or {\"counts\": [...]}")
    counts: list[int] = []
    for count in wanted:
        if counts and count < counts[-1]:
            raise Invalid("waves must not shrink")
        if not counts or count > counts[-1]:
            counts.append(count)
    return counts


def create_rollout(session: Session, *, version_id: int, target: dict[str, Any], waves: Any,
                   gates: dict[str, Any], priority: int, trial: dict[str, Any] | None,
                   shadow: dict[str, Any] | None, auto_revert: bool, push: bool = True,
                   now: float | None = None) -> Rollout:
    now = now if now is not None else time.time()
    devices = resolve_target(session, target=target)
    counts = wave_counts(waves, len(devices))
    rollout = Rollout(version_id=version_id, target=target, waves=counts, waves_spec=waves, gates=gates,
                      priority=priority, trial=trial, shadow=shadow, auto_revert=auto_revert, push=push,
                      state="running",
                      current_wave=0, wave_started_at=None, healthy_since=None, reason=None, created_at=now,
                      updated_at=now)
    session.add(rollout)
    session.flush()
    # a stable shuffle, different per rollout, so canaries are not always the same devices
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{rollout.id}:{d.id}".encode()).digest())
    for index, device in enumerate(order[:counts[-1]]):
        wave = next(w for w, c in enumerate(counts) if index < c)
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, state="pending",
                                  updated_at=now))
    session.flush()
    return rollout


def get_rollout(session: Session, *, rollout_id: int, lock: bool = False) -> Rollout:
    """``lock``: SELECT ... FOR UPDATE, so concurrent writers of one rollout (replicas) take turns."""
    rollout = session.get(Rollout, rollout_id, with_for_update=lock)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} is not known")
    return rollout


def list_rollouts(session: Session, *, states: tuple[str, ...] | None = None) -> list[Rollout]:
    query = select(Rollout).order_by(Rollout.id)
    if states:
        query = query.where(Rollout.state.in_(states))
    return list(session.scalars(query))


def rollout_devices(session: Session, *, rollout_id: int) -> list[RolloutDevice]:
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id).order_by(
        RolloutDevice.wave, RolloutDevice.device_id)
    return list(session.scalars(query))


def start_wave(session: Session, *, rollout: Rollout, wave: int, now: float, push: bool = True) -> None:
    """Give the wave's pending devices this rollout's version, unless a stronger rollout holds them.

    Three queries for the whole wave (its rows, their devices, their rivals), not two per device; rows
    already started are left alone, so starting a wave again only picks up devices that joined it since.
    The devices assigned are pushed ``check_update`` once the transaction commits (server/push.py) when the
    rollout pushes and ``push``."""
    in_wave = (RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == wave, RolloutDevice.state == "pending")
    rows = list(session.scalars(select(RolloutDevice).where(*in_wave)))
    members = select(RolloutDevice.device_id).where(*in_wave)
    devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(members)))}
    rivals: dict[str, list[tuple[RolloutDevice, Rollout]]] = defaultdict(list)
    for other_row, other in session.execute(
            select(RolloutDevice, Rollout).join(Rollout, Rollout.id == RolloutDevice.rollout_id).where(
                RolloutDevice.device_id.in_(members), RolloutDevice.rollout_id != rollout.id,
                Rollout.state.in_(ACTIVE), RolloutDevice.state.not_in(("pending", "superseded", "reverted")))):
        rivals[other_row.device_id].append((other_row, other))
    version_sha = _version_sha(session, rollout.version_id)
    assigned: list[str] = []
    for row in rows:
        device = devices.get(row.device_id)
        if device is None:
            continue
        held_by = rivals.get(device.id, [])
        stronger = [r for _, r in held_by if (r.priority, r.id) > (rollout.priority, rollout.id)]
        row.assigned_at = row.updated_at = now
        if stronger:
            winner = max(stronger, key=lambda r: (r.priority, r.id))
            row.state, row.reason = "superseded", f"rollout {winner.id} (priority {winner.priority}) wins"
            continue
        for other_row, _other in held_by:
            other_row.state = "superseded"
            other_row.reason = f"rollout {rollout.id} (priority {rollout.priority}) wins"
            other_row.updated_at = now
        row.previous_version_id = device.desired_version_id
        row.baseline_p95_ms = device.p95_ms
        if device.model_sha256 and version_sha == device.model_sha256:
            row.state, row.reason = "committed", "already runs this version"
        else:
            row.state, row.reason = "assigned", None
            assigned.append(device.id)
        set_desired(device, version_id=rollout.version_id, rollout_id=rollout.id, now=now)
    if push and rollout.push:
        note_push(session, rollout_id=rollout.id, why=f"wave {wave + 1}", device_ids=assigned)


def _owes_its_fetch() -> tuple[Any, ...]:
    """The rows (joined to their device) whose device is online and has not fetched the update yet."""
    return RolloutDevice.state.in_(NOT_FETCHED), Device.online.is_(True)


def not_fetched(session: Session, *, pushed: dict[int, list[str]]) -> set[tuple[int, str]]:
    """Of these pushed devices (rollout id -> device ids), the (rollout, device) pairs whose device is online
    and has not fetched the update yet: what a push still owes the server (server/push.py window)."""
    waiting: set[tuple[int, str]] = set()
    for rollout_id, device_ids in pushed.items():
        rows = session.execute(
            select(RolloutDevice.device_id).join(Device, Device.id == RolloutDevice.device_id).where(
                RolloutDevice.rollout_id == rollout_id, RolloutDevice.device_id.in_(device_ids), *_owes_its_fetch()))
        waiting.update((rollout_id, device_id) for (device_id,) in rows)
    return waiting


def unfetched_stragglers(session: Session, *, assigned_before: float, limit: int = 10_000) -> dict[int, list[str]]:
    """Devices of running push rollouts, online, given the version before ``assigned_before`` and still not
    past the download: the ones a push should reach again (its replica died mid-spread, the command was lost)."""
    rows = session.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id).join(Device, Device.id == RolloutDevice.device_id)
        .where(Rollout.state == "running", Rollout.push.is_(True), RolloutDevice.wave <= Rollout.current_wave,
               RolloutDevice.assigned_at < assigned_before, *_owes_its_fetch())
        .order_by(RolloutDevice.rollout_id, RolloutDevice.device_id).limit(limit))
    stragglers: dict[int, list[str]] = {}
    for rollout_id, device_id in rows:
        stragglers.setdefault(rollout_id, []).append(device_id)
    return stragglers


def join_rollouts(session: Session, *, device: Device, now: float) -> Rollout | None:
    """Give a device enrolled after a rollout started the version meant for it, so a fleet's newcomers do not
    sit on what they shipped with. An active rollout whose target it matches wins (strongest first: priority,
    then newest); it joins the last wave, which assigns it when that wave starts (at once when the rollout
    is already in it). Else the newest completed rollout whose target it matches assigns it at once.
    A device that already has a desired state is left alone."""
    if device.desired_version_id is not None:
        return None
    joined = select(RolloutDevice.rollout_id).where(RolloutDevice.device_id == device.id)
    candidates = [r for r in session.scalars(select(Rollout).where(
        Rollout.state.in_((*ACTIVE, "completed")), Rollout.id.not_in(joined))) if target_matches(r.target, device)]
    active = [r for r in candidates if r.state in ACTIVE]
    if active:
        rollout = max(active, key=lambda r: (r.priority, r.id))
    elif candidates:
        rollout = max(candidates, key=lambda r: r.id)
    else:
        return None
    last = len(rollout.waves) - 1
    session.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=last, state="pending",
                              updated_at=now))
    session.flush()
    if rollout.state == "completed" or (rollout.state == "running" and rollout.current_wave == last):
        start_wave(session, rollout=rollout, wave=last, now=now, push=False)  # it checks in right after enrolling
    return rollout


def _version_sha(session: Session, version_id: int) -> str | None:
    row = session.get(ModelVersion, version_id)
    return row.sha256 if row else None


def set_state(session: Session, *, rollout_id: int, action: str, revert: bool = False,
              reason: str | None = None, now: float | None = None) -> Rollout:
    """Manual (or gate-driven) pause / resume / abort."""
    now = now if now is not None else time.time()
    rollout = get_rollout(session, rollout_id=rollout_id, lock=True)
    if action == "pause":
        if rollout.state != "running":
            raise Conflict(f"rollout {rollout_id} is {rollout.state}, not running")
        rollout.state, rollout.reason = "paused", reason or "paused by the operator"
    elif action == "resume":
        if rollout.state != "paused":
            raise Conflict(f"rollout {rollout_id} is {rollout.state}, not paused")
        rollout.state, rollout.reason, rollout.healthy_since = "running", None, None
        start_wave(session, rollout=rollout, wave=rollout.current_wave, now=now)  # devices that joined meanwhile
    elif action == "abort":
        if rollout.state not in ACTIVE:
            raise Conflict(f"rollout {rollout_id} is already {rollout.state}")
        rollout.state, rollout.reason = "aborted", reason or "aborted by the operator"
        if revert:
            revert_devices(session, rollout=rollout, now=now)
    else:
        raise Invalid(f"unknown action {action!r}")
    rollout.updated_at = now
    return rollout


def revert_devices(session: Session, *, rollout: Rollout, now: float) -> int:
    """Send the devices this rollout updated back to what they had before (``revert: true`` manifests); they
    are pushed ``check_update`` once the transaction commits when the rollout pushes."""
    reverted: list[str] = []
    for row in rollout_devices(session, rollout_id=rollout.id):
        if row.state in NOT_COUNTED or row.state == "reverted":
            continue
        device = session.get(Device, row.device_id)
        if device is None or device.desired_rollout_id != rollout.id:
            continue
        set_desired(device, version_id=row.previous_version_id, rollout_id=rollout.id,
                    revert=row.previous_version_id is not None, now=now)
        row.state = "reverted"
        row.reason = None if row.previous_version_id is not None else "no earlier model to go back to"
        row.updated_at = now
        reverted.append(row.device_id)
    if rollout.push:
        note_push(session, rollout_id=rollout.id, why="revert", device_ids=reverted)
    return len(reverted)


def record_report(session: Session, *, device: Device, report: UpdateReport, now: float | None = None,
                  lock: bool = True) -> None:
    """``lock``: read the rollout row FOR UPDATE (false when the caller locked it already: server/reports.py)."""
    now = now if now is not None else time.time()
    device.update_state, device.update_reason = report.state, report.reason
    device.last_seen = max(device.last_seen or 0.0, now)
    if report.state == "committed":
        device.model_name, device.model_version = report.model, report.version
        if report.sha256:
            device.model_sha256 = report.sha256
    rollout_id = report.rollout_id if report.rollout_id is not None else device.desired_rollout_id
    if rollout_id is None:
        return
    rollout = session.get(Rollout, rollout_id, with_for_update=True) if lock else session.get(Rollout, rollout_id)
    row = session.get(RolloutDevice, (rollout_id, device.id))
    if row is None or rollout is None or row.state in ("pending", "superseded", "reverted"):
        return
    version = session.get(ModelVersion, rollout.version_id)
    model = session.get(Model, version.model_id) if version else None
    if version is None or model is None or (report.model, report.version) != (model.name, version.version):
        return  # a report about another model (e.g. a revert) does not move this rollout
    if not (row.state == "committed" and report.state == "committed"):  # a repeated commit keeps its time:
        row.updated_at = now  # the latency gate's window of a committed device starts there
    row.state, row.reason = report.state, report.reason
    shadow = report.metrics.get("shadow")
    if isinstance(shadow, dict):
        row.shadow = shadow


def wave_tallies(session: Session, *, rollout_id: int) -> dict[int, Counter[str]]:
    """Per wave, how many of its devices are in each state (one GROUP BY, no rows loaded)."""
    tallies: dict[int, Counter[str]] = defaultdict(Counter)
    for wave, state, count in session.execute(
            select(RolloutDevice.wave, RolloutDevice.state, func.count()).where(
                RolloutDevice.rollout_id == rollout_id).group_by(RolloutDevice.wave, RolloutDevice.state)):
        tallies[int(wave)][str(state)] = int(count)
    return tallies


def committed_p95(session: Session, *, rollout_id: int, model_version: int, up_to_wave: int) -> dict[str, float]:
    """Mean p95 reported with the rollout's version since assignment, per committed device (one query)."""
    query = (select(Telemetry.device_id, func.avg(Telemetry.p95_ms))
             .join(RolloutDevice, and_(RolloutDevice.device_id == Telemetry.device_id,
                                       RolloutDevice.rollout_id == rollout_id))
             .where(RolloutDevice.state == "committed", RolloutDevice.wave <= up_to_wave,
                    Telemetry.model_version == model_version, Telemetry.p95_ms.is_not(None),
                    or_(RolloutDevice.assigned_at.is_(None), Telemetry.ts >= RolloutDevice.assigned_at))
             .group_by(Telemetry.device_id))
    return {device_id: float(p95) for device_id, p95 in session.execute(query) if p95 is not None}


def rollout_public(session: Session, rollout: Rollout, *, with_devices: bool = True) -> dict[str, Any]:
    version = session.get(ModelVersion, rollout.version_id)
    model = session.get(Model, version.model_id) if version else None
    tallies = wave_tallies(session, rollout_id=rollout.id)
    waves = []
    for index, size in enumerate(rollout.waves):
        members = tallies.get(index, Counter())
        if rollout.state == "completed" or index < rollout.current_wave:
            state = "done"
        elif index == rollout.current_wave:
            state = "active" if rollout.state == "running" else rollout.state
        else:
            state = "pending"
        waves.append({"index": index, "size": size, "devices": sum(members.values()),
                      "committed": members["committed"],
                      "failed": sum(members[s] for s in FAILED_STATES),
                      "in_flight": sum(members[s] for s in IN_FLIGHT),
                      "superseded": members["superseded"], "state": state})
    conflicts = session.execute(select(RolloutDevice.device_id, RolloutDevice.reason).where(
        RolloutDevice.rollout_id == rollout.id, RolloutDevice.state == "superseded").order_by(
        RolloutDevice.wave, RolloutDevice.device_id))
    doc: dict[str, Any] = {
        "id": rollout.id, "model": model.name if model else None, "version": version.version if version else None,
        "target": rollout.target, "waves_spec": rollout.waves_spec, "gates": rollout.gates,
        "priority": rollout.priority, "auto_revert": rollout.auto_revert, "push": rollout.push,
        "trial": rollout.trial,
        "shadow": rollout.shadow, "state": rollout.state, "current_wave": rollout.current_wave,
        "reason": rollout.reason, "wave_started_at": rollout.wave_started_at,
        "healthy_since": rollout.healthy_since, "created_at": rollout.created_at, "updated_at": rollout.updated_at,
        "waves": waves,
        "conflicts": [{"device_id": device_id, "reason": reason} for device_id, reason in conflicts],
    }
    if with_devices:
        doc["devices"] = [{"device_id": r.device_id, "wave": r.wave, "state": r.state, "reason": r.reason,
                           "baseline_p95_ms": r.baseline_p95_ms, "assigned_at": r.assigned_at,
                           "updated_at": r.updated_at, "shadow": _shadow_brief(r.shadow)}
                          for r in rollout_devices(session, rollout_id=rollout.id)]
    return doc


def _shadow_brief(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    return {"passed": report.get("passed"), "agreement": report.get("agreement"), "samples": report.get("samples"),
            "p95_ms": (report.get("latency_ms") or {}).get("p95"), "cpu_pct": report.get("cpu_pct"),
            "reason": report.get("reason")}

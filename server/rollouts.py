"""Gated waves: ``evaluate_rollout`` decides (pure), ``step``/``tick`` apply its decision.

Gates, evaluated over the devices given the version so far (waves up to the current one,
superseded devices left out):

- failure ratio (rolled back, rejected, failed) must stay at or under ``max_failure_ratio``;
- shadow gates over the devices' shadow reports;
- p95 latency (server/latency_gate.py): the updated devices against a concurrent control cohort still on
  the previous version (Mann-Whitney U), or against their own pre-update window when no control is left;
  a wave pauses only when the slowdown is significant (p < ``latency_alpha``) and its ratio is above
  ``max_p95_regression``; with too little data it waits (at most ``latency_max_wait_s``);
- a breach pauses the rollout with the reason, or aborts it and reverts when ``auto_revert``;
- the wave is done once ``min_committed_ratio`` of its devices committed and that has held for
  ``soak_s`` seconds; then the next wave starts, after the last the rollout is completed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from edgefleet.server.crud import rollouts as crud
from edgefleet.server.crud.gate_data import latency_data
from edgefleet.server.db import Database
from edgefleet.server.db.models import Rollout, RolloutDevice
from edgefleet.server.db.session import ROLLOUT_LOCK
from edgefleet.server.latency_gate import LatencyData, LatencySettings, evaluate_latency

log = logging.getLogger("edgefleet.server.rollouts")

# Rollout writes (gate steps, reports, enrollments, manual actions) take this lock in-process, and on
# PostgreSQL a transaction-scoped advisory lock too (``rollout_writes``), so replicas take turns the way
# threads do: a report batch (device rows, then the rollout row) and a wave start (the rollout row, then
# device rows) in two replicas would otherwise deadlock. SQLite's driver starts its transaction only at
# the first write, so without the lock a step could act on rows read before a report landed.
WRITE_LOCK = threading.RLock()


@contextmanager
def rollout_writes(db: Database) -> Iterator[Session]:
    """A transaction that writes rollout state, serialized with every other one in every replica."""
    with WRITE_LOCK, db.session() as session:
        if db.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROLLOUT_LOCK})
        yield session

Action = Literal["wait", "advance", "complete", "pause", "abort"]


@dataclass(frozen=True)
class Gates:
    min_committed_ratio: float = 0.9
    max_failure_ratio: float = 0.1
    max_p95_regression: float | None = 1.5
    soak_s: float = 30.0
    min_shadow_agreement: float | None = None
    max_shadow_p95_ms: float | None = None
    latency_alpha: float = 0.01
    latency_min_devices: int = 3
    latency_min_samples: int = 3
    latency_warmup_s: float = 10.0
    latency_baseline_s: float = 300.0
    latency_max_wait_s: float | None = 900.0

    def latency(self) -> LatencySettings:
        return LatencySettings(max_ratio=self.max_p95_regression or 0.0, alpha=self.latency_alpha,
                               min_devices=self.latency_min_devices, min_samples=self.latency_min_samples,
                               warmup_s=self.latency_warmup_s, baseline_s=self.latency_baseline_s,
                               max_wait_s=self.latency_max_wait_s)


@dataclass(frozen=True)
class DeviceOutcome:
    state: str
    baseline_p95_ms: float | None = None
    p95_ms: float | None = None  # informational; the p95 gate judges LatencyData (server/latency_gate.py)
    shadow: dict[str, Any] | None = None  # the device's shadow report (agreement, latency_ms, samples, reason)
    device_id: str | None = None


def shadow_breach(gates: Gates, outcomes: Sequence[DeviceOutcome], wave: int) -> str | None:
    """The first device whose shadow figures break the shadow gates (only reports with a verdict count)."""
    for outcome in outcomes:
        report = outcome.shadow
        if not report or not report.get("samples"):
            continue
        who = outcome.device_id or "a device"
        agreement = report.get("agreement")
        p95 = (report.get("latency_ms") or {}).get("p95")
        if gates.min_shadow_agreement is not None and isinstance(agreement, int | float) \
                and agreement < gates.min_shadow_agreement:
            return (f"wave {wave + 1}: shadow agreement {agreement:.3f} on {who} below "
                    f"{gates.min_shadow_agreement:.3f} ({report.get('samples')} inputs)")
        if gates.max_shadow_p95_ms is not None and isinstance(p95, int | float) and p95 > gates.max_shadow_p95_ms:
            return f"wave {wave + 1}: shadow p95 {p95:.2f} ms on {who} above {gates.max_shadow_p95_ms:.2f} ms"
        if report.get("passed") is False and outcome.state in crud.FAILED_STATES:
            return f"wave {wave + 1}: {who} held the candidate back: shadow: {report.get('reason')}"
    return None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None
    healthy_since: float | None


def evaluate_rollout(*, current_wave: int, wave_count: int, gates: Gates, outcomes: Sequence[DeviceOutcome],
                     healthy_since: float | None, auto_revert: bool, now: float,
                     latency: LatencyData | None = None, wave_started_at: float | None = None) -> Decision:
    """``latency``: the telemetry the p95 gate judges (None: that gate has nothing to judge)."""
    counted = [o for o in outcomes if o.state not in crud.NOT_COUNTED]
    total = len(counted)
    failed = sum(o.state in crud.FAILED_STATES for o in counted)
    committed = sum(o.state == "committed" for o in counted)
    breach = shadow_breach(gates, counted, current_wave)
    if breach is None and total and failed / total > gates.max_failure_ratio:
        breach = (f"wave {current_wave + 1}: failure ratio {failed}/{total} = {failed / total:.2f} "
                  f"above {gates.max_failure_ratio:.2f}")
    waiting: str | None = None
    passed: str | None = None  # what the latency gate found, for the log line of an advance
    if breach is None and gates.max_p95_regression is not None and latency is not None:
        verdict = evaluate_latency(gates.latency(), latency, wave=current_wave)
        if verdict.status == "breach":
            breach = verdict.reason
        elif verdict.status == "wait":
            waiting = verdict.reason
        else:
            passed = f"latency gate: {verdict.reason}" if verdict.reason else None
    if breach is not None:
        return Decision("abort" if auto_revert else "pause", breach, None)
    if total and committed / total < gates.min_committed_ratio:
        return Decision("wait", waiting, None)
    since = healthy_since if healthy_since is not None else now
    if now - since < gates.soak_s:
        return Decision("wait", waiting, since)
    note = passed
    if waiting is not None:
        started = wave_started_at if wave_started_at is not None else since
        if gates.latency_max_wait_s is None or now - started < gates.latency_max_wait_s:
            return Decision("wait", waiting, since)
        note = f"latency gate not evaluated after {gates.latency_max_wait_s:g} s: {waiting}"
    return Decision("complete" if current_wave + 1 >= wave_count else "advance", note, since)


def gates_of(rollout: Rollout) -> Gates:
    """The rollout's gates; shadow gates default to the bounds of its shadow spec."""
    given = {k: v for k, v in (rollout.gates or {}).items() if k in Gates.__dataclass_fields__}
    shadow = rollout.shadow or {}
    if given.get("min_shadow_agreement") is None and shadow.get("min_agreement") is not None:
        given["min_shadow_agreement"] = shadow["min_agreement"]
    if given.get("max_shadow_p95_ms") is None and shadow.get("max_latency_ms") is not None:
        given["max_shadow_p95_ms"] = shadow["max_latency_ms"]
    return Gates(**given)


def outcomes_for(db_session: Session, rollout: Rollout) -> list[DeviceOutcome]:
    """The devices given the version so far, as plain values (one query whatever the fleet size)."""
    rows = db_session.execute(
        select(RolloutDevice.device_id, RolloutDevice.state, RolloutDevice.baseline_p95_ms, RolloutDevice.shadow)
        .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave <= rollout.current_wave)
        .order_by(RolloutDevice.wave, RolloutDevice.device_id))
    return [DeviceOutcome(state, baseline, None, shadow, device_id) for device_id, state, baseline, shadow in rows]


# The latency gate's telemetry, per rollout. The queries cost ~0.3 s at 10,000 devices on SQLite and run under
# the rollout write lock that update reports wait for, so they are read again only when the wave changed or
# when the data is older than LATENCY_REFRESH_S or LATENCY_DUTY times the last read's duration (at most a
# tenth of the time in them). While a wave's devices commit or soak, ticks reuse that data (a breach it shows
# is judged again on fresh data); a decision that ends the wait, or that only the latency gate holds back,
# is taken on data read with the wave's current number of committed devices, so a verdict never rests on
# fewer devices than the gate counts.
LATENCY_REFRESH_S = 1.0
LATENCY_DUTY = 10.0
_latency_cache: dict[int, tuple[tuple[int, int], float, float, LatencyData]] = {}


def _latency(session: Session, rollout: Rollout, gates: Gates, outcomes: Sequence[DeviceOutcome],
             now: float, fresh: bool = False) -> tuple[LatencyData, bool]:
    """The gate's data and whether it was read with the current committed count (``fresh``: it must be)."""
    key = (rollout.current_wave, sum(o.state == "committed" for o in outcomes))
    cached = _latency_cache.get(rollout.id)
    if cached is not None:
        cached_key, read_at, took, data = cached
        if cached_key[0] == key[0] and 0 <= now - read_at < max(LATENCY_REFRESH_S, LATENCY_DUTY * took) \
                and (cached_key == key or not fresh):
            return data, cached_key == key
    started = time.monotonic()
    data = latency_data(session, rollout=rollout, settings=gates.latency())
    _latency_cache[rollout.id] = (key, now, time.monotonic() - started, data)
    return data, True


def _held_by_latency(decision: Decision, gates: Gates, now: float) -> bool:
    """A wait that only the latency gate causes: every other gate passed and the soak is over."""
    return decision.action == "wait" and decision.healthy_since is not None \
        and now - decision.healthy_since >= gates.soak_s


def step(db: Database, *, rollout_id: int, now: float) -> Decision | None:
    """Evaluate one running rollout and apply the decision in one transaction."""
    with rollout_writes(db) as session:
        rollout = crud.get_rollout(session, rollout_id=rollout_id, lock=True)
        if rollout.state != "running":
            _latency_cache.pop(rollout_id, None)
            return None
        if rollout.wave_started_at is None:
            crud.start_wave(session, rollout=rollout, wave=rollout.current_wave, now=now)
            rollout.wave_started_at = rollout.updated_at = now
        gates = gates_of(rollout)
        outcomes = outcomes_for(session, rollout)
        gated = gates.max_p95_regression is not None
        latency, current = _latency(session, rollout, gates, outcomes, now) if gated else (None, True)

        def decide(data: LatencyData | None) -> Decision:
            return evaluate_rollout(current_wave=rollout.current_wave, wave_count=len(rollout.waves), gates=gates,
                                    outcomes=outcomes, healthy_since=rollout.healthy_since,
                                    auto_revert=rollout.auto_revert, now=now, latency=data,
                                    wave_started_at=rollout.wave_started_at)

        decision = decide(latency)
        if not current and (decision.action != "wait" or _held_by_latency(decision, gates, now)):
            decision = decide(_latency(session, rollout, gates, outcomes, now, fresh=True)[0])
        if decision.action == "wait":
            if decision.reason:
                log.debug("rollout %s: %s", rollout.id, decision.reason)
            if rollout.healthy_since != decision.healthy_since:
                rollout.healthy_since = decision.healthy_since
            return decision
        rollout.updated_at = now
        if decision.action != "advance":
            _latency_cache.pop(rollout.id, None)
        if decision.action == "advance":
            rollout.current_wave += 1
            rollout.healthy_since = None
            rollout.wave_started_at = now
            crud.start_wave(session, rollout=rollout, wave=rollout.current_wave, now=now)
        elif decision.action == "complete":
            rollout.state, rollout.healthy_since = "completed", decision.healthy_since
        elif decision.action == "pause":
            rollout.state, rollout.reason = "paused", decision.reason
        else:
            crud.set_state(session, rollout_id=rollout.id, action="abort", revert=True, reason=decision.reason,
                           now=now)
        log.info("rollout %s: %s %s", rollout.id, decision.action, decision.reason or "")
        return decision


def tick(db: Database, *, now: float) -> None:
    with db.session() as session:
        ids = [r.id for r in crud.list_rollouts(session, states=("running",))]
    for rollout_id in ids:
        try:
            step(db, rollout_id=rollout_id, now=now)
        except Exception:  # one bad rollout must not stop the others
            log.exception("rollout %s: evaluation failed", rollout_id)


__all__ = ["DeviceOutcome", "Gates", "evaluate_rollout", "gates_of", "rollout_writes", "shadow_breach", "step",
           "tick"]

"""What a fetched manifest does to the machine: start a new target, be refused, or nothing (up to date,
already on it, an update in hand, a target proven bad here)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgefleet.agent.errors import SignatureError, UpdateRejected
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.handlers import Transition, go
from edgefleet.agent.ota.handlers.report import report_metrics
from edgefleet.agent.ota.state import IN_PROGRESS, State, StateRecord, Trigger, target_key
from edgefleet.agent.ota.verify import Running
from edgefleet.agent.wire import Manifest, SignedManifest

log = logging.getLogger("agent.ota.client")


def consider(ctx: UpdateContext, record: StateRecord, signed: SignedManifest, running: Running,
             verify: Callable[[SignedManifest], Manifest]) -> Transition | None:
    try:
        manifest = verify(signed)
    except (SignatureError, UpdateRejected) as exc:
        return refuse(ctx, record, signed, str(exc))
    key = target_key(signed.manifest)
    if manifest.model.version == running.version and manifest.artifact.sha256 == running.sha256:
        return None  # up to date
    if record.state is State.DOWNLOADING and record.target_key() == key:
        return None  # already on it
    if record.state in IN_PROGRESS and record.state is not State.DOWNLOADING:
        return None  # finish (or roll back) the update in hand first
    outcome = record.finished.get(key)
    if outcome == State.ROLLED_BACK.value:
        return None  # proven unhealthy here: only a new version (or a revert) moves the device again
    if outcome in (State.FAILED.value, State.REJECTED.value) and \
            time.time() - record.finished_at.get(key, 0.0) < ctx.config.update.retry_failed_s:
        return None
    ctx.clear_partial()
    ctx.shadow_last = None
    return go(Trigger.ACCEPTED, target=signed.model_dump(mode="json"), attempts=0, reason=None, slot=None,
              previous=None, via=None, baseline_p95_ms=None)


def refuse(ctx: UpdateContext, record: StateRecord, signed: SignedManifest, reason: str) -> Transition | None:
    log.warning("manifest rejected: %s", reason)
    if record.state in IN_PROGRESS:  # the update in hand goes on; the refusal is told, not entered
        ctx.reporter.event("update.rejected", signed.manifest, reason=reason)
        ctx.reporter.report(State.REJECTED, signed.manifest, reason, report_metrics(ctx, State.REJECTED, record.via))
        return None
    if record.state is State.REJECTED and record.target == signed.model_dump(mode="json"):
        return None  # the same manifest again: already reported
    return go(Trigger.REJECTED, target=signed.model_dump(mode="json"), reason=reason, attempts=0)

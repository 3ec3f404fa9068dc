"""``trial``: the candidate serves while a TrialWatcher judges it; pass commits, a breach rolls back at once."""

from __future__ import annotations

from agent.ota.context import UpdateContext
from agent.ota.handlers import Transition, go
from agent.ota.handlers.rollback import restore_previous
from agent.ota.state import StateRecord, Trigger
from agent.ota.trial import TrialWatcher
from agent.wire import Manifest


def handle(ctx: UpdateContext, record: StateRecord, manifest: Manifest) -> Transition | None:
    policy = manifest.trial or ctx.config.update.trial
    meta = manifest.model.model_copy(update={"sha256": manifest.artifact.sha256})
    served = ctx.host.meta
    if served is None or (served.version, served.sha256) != (meta.version, meta.sha256):
        restore_previous(ctx, record)
        return go(Trigger.BREACHED, reason="the candidate is not serving")
    watcher = TrialWatcher(policy, meta, record.baseline_p95_ms)
    ctx.host.add_observer(watcher)
    try:
        while not ctx.stop.is_set():
            verdict = watcher.evaluate()
            if verdict.decided:
                break
            ctx.stop.wait(0.05)
        else:
            return None  # stopping: recovery rolls the trial back at the next start
    finally:
        ctx.host.remove_observer(watcher)
    ctx.trial_metrics = verdict.metrics
    if verdict.passed:
        if ctx.old is not None:
            ctx.old[0].close()
            ctx.old = None
        return go(Trigger.PASSED, reason=None)
    restore_previous(ctx, record)
    return go(Trigger.BREACHED, reason=verdict.reason or "trial breached")

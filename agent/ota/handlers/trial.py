"""``trial``: the candidate serves while a TrialWatcher judges it; pass commits, a breach rolls back at once."""

from __future__ import annotations

from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.handlers import Transition, go
from edgefleet.agent.ota.handlers.rollback import restore_previous
from edgefleet.agent.ota.paired import LatestFeeds, Paired, measure_beside
from edgefleet.agent.ota.state import StateRecord, Trigger
from edgefleet.agent.ota.trial import MIN_BASELINE, TrialWatcher
from edgefleet.agent.wire import Manifest, TrialPolicy

PAIRED_BUDGET_S = 3.0  # the most timing the previous model again may take


def handle(ctx: UpdateContext, record: StateRecord, manifest: Manifest) -> Transition | None:
    policy = manifest.trial or ctx.config.update.trial
    meta = manifest.model.model_copy(update={"sha256": manifest.artifact.sha256})
    served = ctx.host.meta
    if served is None or (served.version, served.sha256) != (meta.version, meta.sha256):
        restore_previous(ctx, record)
        return go(Trigger.BREACHED, reason="the candidate is not serving")
    feeds = LatestFeeds(meta)
    watcher = TrialWatcher(policy, meta, record.baseline_p95_ms, baseline=ctx.baseline_latencies,
                           paired=lambda: previous_now(ctx, policy, watcher, feeds))
    ctx.host.add_observer(watcher)
    ctx.host.add_tap(feeds)
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
        ctx.host.remove_tap(feeds)
    ctx.trial_metrics = verdict.metrics
    if verdict.passed:
        if ctx.old is not None:
            ctx.old[0].close()
            ctx.old = None
        return go(Trigger.PASSED, reason=None)
    restore_previous(ctx, record)
    return go(Trigger.BREACHED, reason=verdict.reason or "trial breached")


def previous_now(ctx: UpdateContext, policy: TrialPolicy, watcher: TrialWatcher, feeds: LatestFeeds) -> Paired | None:
    """The previous model timed now on the candidate's latest live inputs; None once it is gone."""
    candidate = ctx.host.model
    if ctx.old is None or candidate is None:
        return None
    rounds = max(3 * MIN_BASELINE, 2 * policy.min_inferences)
    return measure_beside(candidate, ctx.old[0], feeds.feeds, live_since=watcher.live_since,
                          rounds=min(rounds, 200), budget_s=PAIRED_BUDGET_S, min_live=MIN_BASELINE,
                          stop=ctx.stop.is_set)

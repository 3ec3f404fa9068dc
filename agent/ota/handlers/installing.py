"""``installing``: write the inactive slot, load and warm up beside the serving model, shadow it when the
manifest asks, then swap between two inferences and switch the active pointer."""

from __future__ import annotations

import logging
import time

from edgefleet.agent.daemon.quality import save_profile
from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.handlers import Transition, go
from edgefleet.agent.ota.handlers.shadow import shadow_candidate
from edgefleet.agent.ota.slots import SlotInfo
from edgefleet.agent.ota.state import StateRecord, Trigger
from edgefleet.agent.ota.synthetic import synthetic_feeds
from edgefleet.agent.ota.trial import MIN_BASELINE, p95_ms
from edgefleet.agent.ota.verify import check_artifact
from edgefleet.agent.wire import Manifest

log = logging.getLogger("agent.ota.client")


def handle(ctx: UpdateContext, record: StateRecord, manifest: Manifest) -> Transition | None:
    art = manifest.artifact
    slot = record.slot or ctx.slots.inactive_slot()
    source = ctx.partial(art.sha256)
    meta = manifest.model.model_copy(update={"sha256": art.sha256})
    try:
        check_artifact(source, art.sha256, art.size)
        info = SlotInfo(meta=meta, file=f"model.{art.format}", format=art.format, size=art.size,
                        sha256=art.sha256, issued_at=manifest.issued_at, rollout_id=manifest.rollout_id)
        path = ctx.slots.install(slot, source, info)
        model = ctx.loader(path, meta)
    except (OSError, ValueError, EdgefleetError) as exc:
        return go(Trigger.FAILED, reason=f"install failed: {exc}")
    try:
        feeds = synthetic_feeds(model.inputs)
        for _ in range(ctx.config.update.warmup_runs):
            model.infer(feeds)
    except Exception as exc:
        model.close()
        return go(Trigger.FAILED, reason=f"warm-up failed: {type(exc).__name__}: {exc}")
    keep_profile(ctx, manifest)
    if manifest.shadow is not None and ctx.host.model is not None:
        passed, reason = shadow_candidate(ctx, manifest, path, meta)
        if passed is None:  # stopping: recovery installs (and shadows) again at the next start
            model.close()
            return None
        if not passed:
            model.close()
            return go(Trigger.REJECTED, reason=f"shadow: {reason}")
    ctx.baseline_latencies = baseline_latencies(ctx)
    baseline = p95_ms(ctx.baseline_latencies)
    ctx.old = ctx.host.swap(model, meta, close_old=False)
    ctx.slots.switch(slot)
    return go(Trigger.INSTALLED, baseline_p95_ms=baseline)


def keep_profile(ctx: UpdateContext, manifest: Manifest) -> None:
    """Save the manifest's drift profile where the daemon finds it when this model serves."""
    if manifest.drift_profile is None:
        return
    try:
        save_profile(ctx.state_dir, manifest.artifact.sha256, manifest.drift_profile)
    except (OSError, ValueError) as exc:  # drift monitoring is informative: never fail an update on it
        log.warning("drift profile of %s v%d not kept: %s", manifest.model.name, manifest.model.version, exc)


def baseline_latencies(ctx: UpdateContext) -> list[float]:
    """The serving model's recent live latencies (s), else ones timed now on synthetic inputs."""
    meta = ctx.host.meta
    if meta is None:
        return []
    window = ctx.baseline.snapshot(meta)
    if len(window) >= MIN_BASELINE:
        return window
    model = ctx.host.model
    if model is None:
        return []
    feeds = synthetic_feeds(model.inputs)
    samples = []
    for _ in range(MIN_BASELINE + 2):
        start = time.perf_counter()
        try:
            ctx.host.infer(feeds)
        except Exception:
            return []
        samples.append(time.perf_counter() - start)
    return samples[2:]  # the first two may be cold

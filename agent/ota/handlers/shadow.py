"""Shadowing inside ``installing``: the candidate runs beside the serving model on live inputs until a verdict."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.quality import BoxLayout, ShadowRunner
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import Manifest, ModelMeta

log = logging.getLogger("agent.ota.client")


def shadow_candidate(ctx: UpdateContext, manifest: Manifest, path: Path, meta: ModelMeta) -> tuple[bool | None, str]:
    """Shadow a second instance of the candidate opened with ``quality.shadow.threads`` runtime threads, so
    the comparison leaves the serving model its cores; the instance that passes serves with the full count."""
    try:
        shadow = ctx.loader(path, meta, threads=ctx.config.quality.shadow.threads)
    except (OSError, ValueError, EdgefleetError) as exc:
        return False, f"cannot open the candidate for shadowing: {exc}"
    try:
        return run_shadow(ctx, manifest, shadow)
    finally:
        shadow.close()


def run_shadow(ctx: UpdateContext, manifest: Manifest, candidate: Model) -> tuple[bool | None, str]:
    """Run the candidate beside the serving model on live inputs (ModelHost tap) until the verdict
    is known or ``quality.shadow.timeout_s``; (None, why) when the agent is stopping."""
    assert manifest.shadow is not None
    serving = ctx.host.model
    if serving is not None and _signature(serving.inputs) != _signature(candidate.inputs):
        return False, "the candidate's inputs differ from the serving model's: cannot compare them"
    boxes = manifest.model.boxes
    layout = BoxLayout(**boxes) if manifest.model.task == "detection" and boxes else None  # type: ignore[arg-type]
    runner = ShadowRunner(candidate.infer, manifest.shadow, manifest.model.task, layout=layout)

    def tap(feeds: Any, outputs: Any, _meta: ModelMeta) -> None:
        runner.offer(feeds, outputs)

    ctx.shadow = runner
    ctx.reporter.event("update.shadowing", manifest.model_dump(mode="json"))
    timeout_s = ctx.config.quality.shadow.timeout_s
    deadline = time.monotonic() + timeout_s
    ctx.host.add_tap(tap)
    try:
        while (verdict := runner.verdict())[0] is None:
            if ctx.stop.is_set():
                return None, "stopping"
            if time.monotonic() >= deadline:
                verdict = (False, f"no verdict within {timeout_s:g}s ({verdict[1]})")
                break
            ctx.stop.wait(0.1)
    finally:
        ctx.host.remove_tap(tap)
        runner.stop()
        report = runner.report()
        report.update(passed=verdict[0] if verdict[0] is not None else report.get("passed"),
                      reason=verdict[1], model=manifest.model.name, version=manifest.model.version)
        ctx.shadow_last = report
        ctx.shadow = None
    log.info("shadow %s v%d: %s (%s)", manifest.model.name, manifest.model.version,
             "passed" if verdict[0] else "failed", verdict[1])
    return verdict


def _signature(inputs: list[Any]) -> list[tuple[str, list[int | None], str]]:
    return [(spec.name, list(spec.shape), spec.dtype) for spec in inputs]

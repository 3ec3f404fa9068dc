"""Telling the world: a telemetry event per life-cycle step, and an UpdateReport per state entered (queued on
disk, POSTed in order)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from edgefleet.agent.errors import ConfigError, TransportError
from edgefleet.agent.ota.serverapi import ReportQueue
from edgefleet.agent.ota.state import State
from edgefleet.agent.wire import UpdateReport

if TYPE_CHECKING:
    from edgefleet.agent.ota.context import UpdateContext
    from edgefleet.agent.ota.serverapi import ServerApi

log = logging.getLogger("agent.ota.client")

WITH_TRIAL = (State.COMMITTED, State.ROLLED_BACK)
WITH_SHADOW = (State.TRIAL, State.COMMITTED, State.ROLLED_BACK, State.REJECTED)


class Reporter:
    def __init__(self, telemetry: Any | None, queue: ReportQueue, api: Callable[[], ServerApi],
                 device_id: str) -> None:
        self.telemetry = telemetry
        self.queue = queue
        self.api = api
        self.device_id = device_id
        self._queue_only = False

    @contextlib.contextmanager
    def queue_only(self) -> Iterator[None]:
        """Reports made inside are queued on disk, not sent (start-up recovery: no network before READY)."""
        self._queue_only = True
        try:
            yield
        finally:
            self._queue_only = False

    def event(self, type_: str, manifest: dict[str, Any], **fields: Any) -> None:
        model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        payload = {"model": model.get("name"), "version": model.get("version"),
                   "rollout_id": manifest.get("rollout_id") if isinstance(manifest, dict) else None,
                   **{k: v for k, v in fields.items() if v is not None}}
        log.info("%s %s v%s%s", type_, payload["model"], payload["version"],
                 f": {fields['reason']}" if fields.get("reason") else "")
        if self.telemetry is None:
            return
        try:
            self.telemetry.event(type_, **payload)
        except Exception:
            log.exception("telemetry event %s failed", type_)

    def report(self, state: State, manifest: dict[str, Any], reason: str | None, metrics: dict[str, Any]) -> None:
        model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        artifact = manifest.get("artifact", {}) if isinstance(manifest, dict) else {}
        try:
            report = UpdateReport(state=state.value, model=str(model.get("name") or "?"),
                                  version=int(model.get("version") or 0),
                                  sha256=artifact.get("sha256") if isinstance(artifact.get("sha256"), str) else None,
                                  rollout_id=manifest.get("rollout_id") if isinstance(manifest, dict) else None,
                                  reason=reason, metrics=metrics)
        except (ValueError, TypeError):
            return
        self.queue.put(report)
        if not self._queue_only:
            self.flush()

    def flush(self) -> None:
        if not self.queue.pending():
            return
        try:
            self.queue.flush(self.api(), self.device_id)
        except (TransportError, ConfigError) as exc:
            log.info("reports queued: %s", exc)


def report_metrics(ctx: UpdateContext, state: State, via: str | None) -> dict[str, Any]:
    """What an UpdateReport for ``state`` carries: trial figures, the shadow verdict, bytes transferred."""
    metrics = dict(ctx.trial_metrics) if state in WITH_TRIAL else {}
    if ctx.shadow_last is not None and state in WITH_SHADOW:
        metrics["shadow"] = ctx.shadow_last
    if via:
        metrics["via"] = via
    metrics["bytes_transferred"] = ctx.bytes_transferred
    return metrics

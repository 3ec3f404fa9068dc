"""``downloading``: the artifact (or a delta) into update/partial/, resumable; a transient error waits."""

from __future__ import annotations

import logging
import os

from edgefleet.agent.errors import TransportError, UpdateRejected
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.download import DiskFull, Downloader
from edgefleet.agent.ota.handlers import Transition, go
from edgefleet.agent.ota.handlers.delta import try_delta
from edgefleet.agent.ota.state import StateRecord, Trigger
from edgefleet.agent.wire import Manifest

log = logging.getLogger("agent.ota.client")


def handle(ctx: UpdateContext, _record: StateRecord, manifest: Manifest) -> Transition | None:
    art = manifest.artifact
    done = ctx.partial(art.sha256)
    if done.exists() and done.stat().st_size == art.size:
        return go(Trigger.DOWNLOADED)
    upd = ctx.config.update
    downloader = Downloader(ctx.http(), headers=ctx.api().auth, stall_timeout_s=upd.stall_timeout_s,
                            attempt_timeout_s=upd.download_timeout_s, connect_timeout_s=ctx.config.server.timeout_s)
    try:
        Downloader.ensure_space(ctx.partial_dir, art.size + (manifest.delta.size if manifest.delta else 0),
                                upd.min_free_mb)
        via = "full"
        if manifest.delta is not None and try_delta(ctx, manifest, downloader, done):
            via = "delta"
        else:
            part = ctx.partial(art.sha256, ".part")
            try:
                downloader.fetch(art.url, part, art.size)
            finally:
                ctx.bytes_transferred += downloader.total_transferred
                downloader.total_transferred = 0
            os.replace(part, done)
    except TransportError as exc:
        ctx.last_error = str(exc)
        log.warning("download paused: %s", exc)
        return None
    except (DiskFull, UpdateRejected) as exc:
        if isinstance(exc, DiskFull):
            ctx.clear_partial()  # give back what this download took, so that `failed` can be saved
        return go(Trigger.FAILED, reason=str(exc))
    return go(Trigger.DOWNLOADED, via=via)

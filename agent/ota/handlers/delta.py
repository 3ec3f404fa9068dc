"""The delta path of a download: fetch the patch (bsdiff4 or tensor delta) against what runs, apply, check it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.download import Downloader
from edgefleet.agent.ota.patches import apply_patch, patch_supported
from edgefleet.agent.ota.verify import check_artifact
from edgefleet.agent.wire import Manifest

log = logging.getLogger("agent.ota.client")


def current_artifact(ctx: UpdateContext, sha256: str) -> Path | None:
    """The file of the model with ``sha256`` that the device has (the active slot, or what serves)."""
    info = ctx.slots.active_info()
    if info is not None and info.sha256 == sha256:
        return ctx.slots.model_path(ctx.slots.active_slot() or "")
    serving = ctx.host.serving()
    if serving is None:
        return None
    model, meta = serving
    if meta.sha256 == sha256 and Path(model.path).is_file():
        return Path(model.path)
    return None


def try_delta(ctx: UpdateContext, manifest: Manifest, downloader: Downloader, done: Path) -> bool:
    """True when ``done`` now holds the artifact, patched; False to fetch the full artifact instead."""
    delta = manifest.delta
    assert delta is not None
    old = current_artifact(ctx, delta.from_sha256)
    if old is None or not patch_supported(delta.algorithm):
        return False
    patch = ctx.partial(delta.sha256, ".patch")
    try:
        downloader.fetch(delta.url, patch, delta.size)
    except UpdateRejected as exc:
        log.warning("delta unavailable (%s); fetching the full artifact", exc)
        return False
    finally:
        ctx.bytes_transferred += downloader.total_transferred
        downloader.total_transferred = 0
    tmp = done.with_suffix(".patched")
    try:
        check_artifact(patch, delta.sha256, delta.size)
        apply_patch(delta.algorithm, old, patch, tmp)
        check_artifact(tmp, manifest.artifact.sha256, manifest.artifact.size)
    except UpdateRejected as exc:
        log.warning("delta failed (%s); fetching the full artifact", exc)
        patch.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, done)
    patch.unlink(missing_ok=True)
    return True

"""Going back: the pointer to the slot that served before the update, and that model serving again."""

from __future__ import annotations

import logging

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.state import StateRecord

log = logging.getLogger("agent.ota.client")


def restore_previous(ctx: UpdateContext, record: StateRecord) -> None:
    """Put the pointer back on the slot that served before the update, and serve it."""
    if record.previous is not None and ctx.slots.active_slot() != record.previous \
            and ctx.slots.info(record.previous) is not None:
        ctx.slots.set_pointer(record.previous, None)
    if ctx.old is not None:
        model, meta = ctx.old
        ctx.old = None
        ctx.host.swap(model, meta, close_old=True)
        return
    serve_active(ctx)


def serve_active(ctx: UpdateContext) -> None:
    """If the host serves something other than the active slot, load the active slot and swap."""
    active = ctx.slots.active()
    served = ctx.host.meta
    if active is None or served is None:
        return
    path, meta = active
    if (served.version, served.sha256) == (meta.version, meta.sha256):
        return
    try:
        model = ctx.loader(path, meta)
    except EdgefleetError as exc:
        log.error("cannot load the active slot %s: %s", path, exc)
        return
    ctx.host.swap(model, meta, close_old=True)

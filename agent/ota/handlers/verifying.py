"""``verifying``: size and sha256 of the downloaded file, then the test-load in a child process."""

from __future__ import annotations

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.handlers import Transition, go
from edgefleet.agent.ota.handlers.probe import test_load
from edgefleet.agent.ota.state import StateRecord, Trigger
from edgefleet.agent.ota.verify import check_artifact
from edgefleet.agent.wire import Manifest


def handle(ctx: UpdateContext, _record: StateRecord, manifest: Manifest) -> Transition:
    art = manifest.artifact
    done = ctx.partial(art.sha256)
    try:
        check_artifact(done, art.sha256, art.size)
    except FileNotFoundError:
        return go(Trigger.FAILED, reason="the downloaded artifact is gone")
    except UpdateRejected as exc:
        done.unlink(missing_ok=True)
        return go(Trigger.REJECTED, reason=str(exc))
    problem = test_load(done, art.format, ctx.config.update.probe_timeout_s)
    if problem is not None:
        return go(Trigger.FAILED, reason=problem)
    return go(Trigger.VERIFIED, slot=ctx.slots.inactive_slot(), previous=ctx.slots.active_slot())

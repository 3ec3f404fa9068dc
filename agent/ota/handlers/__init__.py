"""One handler per in-progress state (mender's shape): each receives the saved record and the manifest it
names and returns the next transition, or None to wait (a transient download error, a stop).

    downloading  downloading.handle   full artifact, or a delta (delta.py), into update/partial/
    verifying    verifying.handle     size + sha256, then the test-load in a child process (probe.py)
    installing   installing.handle    slot, load, warm-up, shadow (shadow.py), swap, pointer
    trial        trial.handle         watch the candidate; a breach rolls back (rollback.py)

The driver (agent/ota/client.py) saves each transition before the next handler runs; report.py
announces every state entered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.agent.ota.context import UpdateContext
from edgefleet.agent.ota.state import State, StateRecord, Trigger
from edgefleet.agent.wire import Manifest


@dataclass(frozen=True)
class Transition:
    trigger: Trigger
    changes: dict[str, Any] = field(default_factory=dict)


def go(trigger: Trigger, **changes: Any) -> Transition:
    return Transition(trigger, changes)


Handler = Callable[[UpdateContext, StateRecord, Manifest], Transition | None]


def handlers() -> dict[State, Handler]:
    from edgefleet.agent.ota.handlers import downloading, installing, trial, verifying

    return {State.DOWNLOADING: downloading.handle, State.VERIFYING: verifying.handle,
            State.INSTALLING: installing.handle, State.TRIAL: trial.handle}

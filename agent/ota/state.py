"""The persisted update state machine (mender-style).

One enum of states whose on-disk strings never change (they are also ``UpdateReport.state``),
one table of ``(state, trigger) -> next state`` rows, and a record that is written with fsync
and an atomic rename *before* the handler of the state it names runs ("save, then act").

At start-up every saved state maps to one recovery action (``RECOVERY``):

    idle, committed, rolled_back, rejected, failed  -> nothing to do
    downloading                                     -> resume the download (Range)
    verifying                                       -> verify the downloaded file again
    installing                                      -> pointer back to the old slot, install again
    trial                                           -> roll back to the previous slot

A counter stored with the record (``attempts``) counts how many times recovery resumed the
same target; past ``update.max_attempts`` the update fails (and rolls back if it had swapped).
"""

from __future__ import annotations

import enum
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.ota.fsutil import atomic_write_json, read_json

CRASH_ENV = "EDGEFLEET_TEST_CRASH_AT"


class State(str, enum.Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"


class Trigger(str, enum.Enum):
    ACCEPTED = "accepted"  # a verified manifest names a new target
    REJECTED = "rejected"  # a manifest or an artifact refused by policy
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLED = "installed"  # written to the inactive slot, hot-swapped, pointer switched
    PASSED = "passed"  # the trial window ended clean
    BREACHED = "breached"  # the trial saw too many errors or too slow a model
    FAILED = "failed"  # a fatal error in this step (disk full, probe crash, load error)
    CRASH_LOOP = "crash_loop"  # recovery resumed the same target too often


TERMINAL = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK, State.REJECTED, State.FAILED})
IN_PROGRESS = frozenset({State.DOWNLOADING, State.VERIFYING, State.INSTALLING, State.TRIAL})

_ROWS: list[tuple[frozenset[State], Trigger, State]] = [
    (TERMINAL | {State.DOWNLOADING}, Trigger.ACCEPTED, State.DOWNLOADING),
    (TERMINAL, Trigger.REJECTED, State.REJECTED),
    (frozenset({State.DOWNLOADING}), Trigger.DOWNLOADED, State.VERIFYING),
    (frozenset({State.DOWNLOADING}), Trigger.FAILED, State.FAILED),
    (frozenset({State.DOWNLOADING}), Trigger.CRASH_LOOP, State.FAILED),
    (frozenset({State.VERIFYING}), Trigger.VERIFIED, State.INSTALLING),
    (frozenset({State.VERIFYING}), Trigger.REJECTED, State.REJECTED),
    (frozenset({State.VERIFYING}), Trigger.FAILED, State.FAILED),
    (frozenset({State.VERIFYING}), Trigger.CRASH_LOOP, State.FAILED),
    (frozenset({State.INSTALLING}), Trigger.INSTALLED, State.TRIAL),
    (frozenset({State.INSTALLING}), Trigger.REJECTED, State.REJECTED),  # the shadow verdict held it back
    (frozenset({State.INSTALLING}), Trigger.FAILED, State.FAILED),
    (frozenset({State.INSTALLING}), Trigger.CRASH_LOOP, State.FAILED),
    (frozenset({State.TRIAL}), Trigger.PASSED, State.COMMITTED),
    (frozenset({State.TRIAL}), Trigger.BREACHED, State.ROLLED_BACK),
    (frozenset({State.TRIAL}), Trigger.FAILED, State.ROLLED_BACK),
    (frozenset({State.TRIAL}), Trigger.CRASH_LOOP, State.ROLLED_BACK),
]

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (state, trigger): target for sources, trigger, target in _ROWS for state in sources
}

# What start-up does with each saved state (see the module docstring).
RECOVERY: dict[State, str] = {
    State.IDLE: "none",
    State.COMMITTED: "none",
    State.ROLLED_BACK: "none",
    State.REJECTED: "none",
    State.FAILED: "none",
    State.DOWNLOADING: "resume_download",
    State.VERIFYING: "verify_again",
    State.INSTALLING: "install_again",
    State.TRIAL: "roll_back",
}

# The life-cycle event published on entering each state.
EVENTS: dict[State, str] = {
    State.DOWNLOADING: "update.downloading",
    State.INSTALLING: "update.verified",
    State.TRIAL: "update.installed",
    State.COMMITTED: "update.committed",
    State.ROLLED_BACK: "update.rolled_back",
    State.REJECTED: "update.rejected",
    State.FAILED: "update.failed",
}


class InvalidTransition(EdgefleetError):
    pass


def next_state(state: State, trigger: Trigger) -> State:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state.value} on {trigger.value}") from None


class StateRecord(BaseModel):
    """``update/state.json``. ``target`` is the signed manifest (``{"manifest", "signatures"}``).

    ``generation`` and ``trusted_time`` are the newest generation and issued_at the device accepted: saved
    (fsync) before the manifest that raised them is acted on, so a replay is refused after any restart."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    state: State = State.IDLE
    target: dict[str, Any] | None = None
    attempts: int = 0  # recoveries of this target
    reason: str | None = None
    slot: str | None = None  # the slot being installed into
    previous: str | None = None  # the slot that served before the update
    via: str | None = None  # delta | full
    baseline_p95_ms: float | None = None
    updated_at: float = Field(default_factory=time.time)
    finished: dict[str, str] = Field(default_factory=dict)  # "version:sha256" -> terminal state
    finished_at: dict[str, float] = Field(default_factory=dict)
    generation: int = 0
    trusted_time: float = 0.0

    def target_key(self) -> str | None:
        if self.target is None:
            return None
        manifest = self.target.get("manifest", {})
        return target_key(manifest)


def target_key(manifest: dict[str, Any]) -> str:
    version = manifest.get("model", {}).get("version")
    sha = manifest.get("artifact", {}).get("sha256")
    return f"{version}:{sha}"


class StateStore:
    """Loads and saves the record; ``save`` is atomic and durable, then honours the crash test hook."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> StateRecord:
        data = read_json(self.path)
        if not isinstance(data, dict):
            return StateRecord()
        try:
            return StateRecord.model_validate(data)
        except ValueError:
            return StateRecord()

    def save(self, record: StateRecord) -> None:
        record.updated_at = time.time()
        atomic_write_json(self.path, record.model_dump(mode="json"))
        crash_at = os.environ.get(CRASH_ENV)
        if crash_at and crash_at == record.state.value:
            os._exit(137)  # test hook: a power cut right after this state was saved

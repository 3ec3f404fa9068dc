"""The state machine table, its persistence (save, then act) and the crash test hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.ota.state import (
    EVENTS,
    IN_PROGRESS,
    RECOVERY,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    State,
    StateRecord,
    StateStore,
    Trigger,
    next_state,
)
from edgefleet.agent.wire import UpdateReport

EXPECTED = {
    **{(s, Trigger.ACCEPTED): State.DOWNLOADING for s in TERMINAL | {State.DOWNLOADING}},
    **{(s, Trigger.REJECTED): State.REJECTED for s in TERMINAL | {State.VERIFYING}},
    (State.DOWNLOADING, Trigger.DOWNLOADED): State.VERIFYING,
    (State.DOWNLOADING, Trigger.FAILED): State.FAILED,
    (State.DOWNLOADING, Trigger.CRASH_LOOP): State.FAILED,
    (State.VERIFYING, Trigger.VERIFIED): State.INSTALLING,
    (State.VERIFYING, Trigger.FAILED): State.FAILED,
    (State.VERIFYING, Trigger.CRASH_LOOP): State.FAILED,
    (State.INSTALLING, Trigger.INSTALLED): State.TRIAL,
    (State.INSTALLING, Trigger.REJECTED): State.REJECTED,  # a failing shadow verdict
    (State.INSTALLING, Trigger.FAILED): State.FAILED,
    (State.INSTALLING, Trigger.CRASH_LOOP): State.FAILED,
    (State.TRIAL, Trigger.PASSED): State.COMMITTED,
    (State.TRIAL, Trigger.BREACHED): State.ROLLED_BACK,
    (State.TRIAL, Trigger.FAILED): State.ROLLED_BACK,
    (State.TRIAL, Trigger.CRASH_LOOP): State.ROLLED_BACK,
}


def test_on_disk_strings_never_change() -> None:
    assert [s.value for s in State] == ["idle", "downloading", "verifying", "installing", "trial", "committed",
                                        "rolled_back", "rejected", "failed"]
    # every state is a valid UpdateReport.state on the wire
    for state in State:
        assert UpdateReport(state=state.value, model="m", version=1).state == state.value


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_every_state_trigger_pair(state: State, trigger: Trigger) -> None:
    expected = EXPECTED.get((state, trigger))
    if expected is None:
        with pytest.raises(InvalidTransition, match=f"no transition from {state.value} on {trigger.value}"):
            next_state(state, trigger)
    else:
        assert next_state(state, trigger) is expected


def test_table_is_exactly_the_expected_rows() -> None:
    assert TRANSITIONS == EXPECTED


def test_every_state_has_a_recovery_action() -> None:
    assert RECOVERY == {State.IDLE: "none", State.COMMITTED: "none", State.ROLLED_BACK: "none",
                        State.REJECTED: "none", State.FAILED: "none", State.DOWNLOADING: "resume_download",
                        State.VERIFYING: "verify_again", State.INSTALLING: "install_again",
                        State.TRIAL: "roll_back"}
    assert set(EVENTS.values()) == {"update.downloading", "update.verified", "update.installed", "update.committed",
                                    "update.rolled_back", "update.rejected", "update.failed"}
    assert IN_PROGRESS.isdisjoint(TERMINAL) and set(State) == IN_PROGRESS | TERMINAL


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "update" / "state.json")
    assert store.load().state is State.IDLE  # nothing saved yet
    record = StateRecord(state=State.TRIAL, target={"manifest": {"model": {"version": 3},
                                                                 "artifact": {"sha256": "ab"}}},
                         attempts=2, slot="slot-b", previous="slot-a", baseline_p95_ms=1.5)
    store.save(record)
    again = store.load()
    assert (again.state, again.attempts, again.slot, again.previous, again.target_key()) == \
        (State.TRIAL, 2, "slot-b", "slot-a", "3:ab")
    assert json.loads((tmp_path / "update" / "state.json").read_text())["state"] == "trial"
    assert sorted(p.name for p in (tmp_path / "update").iterdir()) == ["state.json"]  # no temp file left
    (tmp_path / "update" / "state.json").write_text("{not json")
    assert store.load().state is State.IDLE  # unreadable: start clean, never crash


def test_crash_hook_exits_right_after_saving_that_state(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from edgefleet.agent.ota.state import *; "
            "s = StateStore(Path(sys.argv[1])); s.save(StateRecord(state=State.DOWNLOADING)); "
            "s.save(StateRecord(state=State.VERIFYING)); print('not reached')")
    path = tmp_path / "state.json"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30,
                          env={"EDGEFLEET_TEST_CRASH_AT": "verifying", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 137 and "not reached" not in done.stdout
    assert StateStore(path).load().state is State.VERIFYING  # saved before the "power cut"


def test_every_in_progress_state_has_one_handler_and_its_triggers_are_rows_of_the_table() -> None:
    from edgefleet.agent.ota.handlers import handlers
    from edgefleet.agent.ota.state import IN_PROGRESS, TRANSITIONS

    table = handlers()
    assert set(table) == set(IN_PROGRESS)
    for state in IN_PROGRESS:  # every handler may fail, and the table says where that leads
        assert TRANSITIONS[(state, Trigger.FAILED)] in (State.FAILED, State.ROLLED_BACK)


def test_the_last_accepted_generation_and_trusted_time_survive_a_reload(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(StateRecord(state=State.COMMITTED, generation=12, trusted_time=1_764_600_000.5))
    again = store.load()
    assert (again.generation, again.trusted_time) == (12, 1_764_600_000.5)
    old = json.loads((tmp_path / "state.json").read_text())
    del old["generation"], old["trusted_time"]  # a record written before they existed
    (tmp_path / "state.json").write_text(json.dumps(old))
    assert (store.load().generation, store.load().trusted_time) == (0, 0.0)

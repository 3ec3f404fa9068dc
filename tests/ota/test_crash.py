"""Power cuts: ``kill -9`` (os._exit(137)) right after each persisted state, then a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.ota.state import StateStore
from tests.ota.helpers import push, roll_out
from tests.ota.rig import Device, Traffic
from tests.support.server import RunningServer

REPO = Path(__file__).resolve().parents[2]


def run_agent(config: Path, crash_at: str | None = None) -> tuple[int, dict[str, Any] | None]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_TEST_CRASH_AT"}
    env["PYTHONPATH"] = str(REPO)
    if crash_at:
        env["EDGEFLEET_TEST_CRASH_AT"] = crash_at
    done = subprocess.run([sys.executable, "-m", "tests.ota.agent_proc", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, (json.loads(lines[-1]) if lines else None)


def prepared(server: RunningServer, tmp_path: Path, models: dict[str, Path], device_id: str,
             **update: Any) -> tuple[Device, Path]:
    """A device that runs v1 (installed in-process), with v2 as its new desired state."""
    device = Device(server, tmp_path, device_id, **update)
    name = f"m-{device_id}"
    push(server.url, server.admin(), name, models["v1"])
    roll_out(server.url, server.admin(), name, 1, [device_id])
    with Traffic(device.host):
        assert device.update() == "committed"
    push(server.url, server.admin(), name, models["v2"])
    roll_out(server.url, server.admin(), name, 2, [device_id])
    config = tmp_path / f"{device_id}.json"
    config.write_text(device.config.model_dump_json())
    return device, config


@pytest.mark.parametrize(("crash_at", "recovered", "final", "serving"), [
    ("downloading", "downloading", "committed", 2),
    ("verifying", "verifying", "committed", 2),
    ("installing", "installing", "committed", 2),
    ("trial", "rolled_back", "rolled_back", 1),
])
def test_kill_at_each_state_then_restart(server: RunningServer, tmp_path: Path, models: dict[str, Path],
                                         crash_at: str, recovered: str, final: str, serving: int) -> None:
    device, config = prepared(server, tmp_path, models, f"crash-{crash_at}")
    code, _ = run_agent(config, crash_at)
    assert code == 137
    assert StateStore(device.config.state_dir / "update" / "state.json").load().state.value == crash_at
    code, status = run_agent(config)
    assert code == 0 and status is not None
    assert (status["recovered"], status["state"], status["serving"]) == (recovered, final, serving)
    assert status["active_verified"] is True  # the slot it serves is complete and matches its sha256
    assert status["failed"] == 0 and status["served"] > 0
    if crash_at == "trial":
        assert status["reason"] == "the agent restarted during the trial"


def test_crash_loop_breaker(server: RunningServer, tmp_path: Path, models: dict[str, Path]) -> None:
    """The agent dies every time it enters `installing`: after max_attempts restarts it gives up on v2."""
    _device, config = prepared(server, tmp_path, models, "crash-loop", max_attempts=1)
    assert run_agent(config, "installing")[0] == 137  # first try
    assert run_agent(config, "installing")[0] == 137  # recovery 1 of 1 re-enters installing and dies again
    code, status = run_agent(config, "installing")  # recovery 2 > 1: give up, old model serves
    assert code == 0 and status is not None
    assert (status["recovered"], status["serving"], status["active_verified"]) == ("failed", 1, True)
    assert status["reason"] == "gave up after 2 restarts in state installing"

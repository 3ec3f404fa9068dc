"""The checked-in unit files: `systemd-analyze verify` accepts them, and they carry what the agent relies on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon.support import ROOT

UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _sep, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", ["edgefleet-agent.service", "edgefleet-server.service"])
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    if not Path(ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed")
    unit = UNITS / name
    # As checked in, the only complaint may be the ExecStart binary, which lives on the device, not here.
    original = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (original.stdout + original.stderr).splitlines() if line.strip()]
    assert all("is not executable" in line and "/opt/edgefleet/venv/bin/" in line for line in complaints), \
        complaints
    # With ExecStart pointed at a binary that exists here, verify accepts the unit outright.
    copy = tmp_path / name
    text = unit.read_text()
    start = directives(unit)["ExecStart"][0].split()[0]
    copy.write_text(text.replace(start, "/bin/true"))
    result = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_agent_unit_contract() -> None:
    unit = directives(UNITS / "edgefleet-agent.service")
    expected = {"Type": "notify", "Restart": "on-failure", "StateDirectory": "edgefleet", "User": "edgefleet",
                "SupplementaryGroups": "video", "ProtectSystem": "strict", "ProtectHome": "yes",
                "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ExecReload": "/bin/kill -HUP $MAINPID"}
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["WatchdogSec"] and unit["RestrictAddressFamilies"]
    assert unit["ExecStart"][0].endswith("edgefleet-agent run --config /etc/edgefleet/agent.yaml")
    server = directives(UNITS / "edgefleet-server.service")
    assert server["ExecStart"][0].endswith("edgefleet-server run --config /etc/edgefleet/server.yaml")
    assert server["ProtectSystem"] == ["strict"] and server["NoNewPrivileges"] == ["yes"]

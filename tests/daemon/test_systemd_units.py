"""The checked-in unit files, sysusers.d and tmpfiles.d: systemd's own tools accept them, their hardening
scores what docs/daemon.md promises, and units, `edgefleet-server init`, the configs' defaults and the docs
agree on users and paths."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.server.cli import CONFIG_DIR, DATA_DIR, SERVICE_USER, init
from edgefleet.server.config import ServerConfig
from tests.daemon.support import ROOT

UNITS = ROOT / "systemd"
AGENT_UNIT, SERVER_UNIT = UNITS / "edgefleet-agent.service", UNITS / "edgefleet-server.service"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
MAX_EXPOSURE = {"edgefleet-agent.service": 2.0, "edgefleet-server.service": 1.5}


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _sep, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (.ci/run installs systemd)")
    return path


@pytest.mark.parametrize("name", ["edgefleet-agent.service", "edgefleet-server.service"])
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    analyze = tool("systemd-analyze")
    unit = UNITS / name
    # As checked in, the only complaint may be the ExecStart binary, which lives on the device, not here.
    original = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (original.stdout + original.stderr).splitlines() if line.strip()]
    assert all("is not executable" in line and "/opt/edgefleet/venv/bin/" in line for line in complaints), \
        complaints
    # With ExecStart pointed at a binary that exists here, verify accepts the unit outright.
    copy = tmp_path / name
    text = unit.read_text()
    start = directives(unit)["ExecStart"][0].split()[0]
    copy.write_text(text.replace(start, "/bin/true"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def exposure(unit: Path) -> float:
    done = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", str(unit)], capture_output=True,
                          text=True, timeout=60)
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_hardening_exposure(name: str) -> None:
    assert exposure(UNITS / name) <= MAX_EXPOSURE[name]


def test_the_score_moves_with_the_hardening(tmp_path: Path) -> None:
    """The figure is the unit's: drop the syscall filter and the namespaces, and it rises past the bound."""
    weakened = tmp_path / "edgefleet-server.service"
    text = SERVER_UNIT.read_text()
    for key in ("SystemCallFilter", "PrivateUsers", "ProtectProc", "PrivateDevices", "RestrictNamespaces"):
        text = re.sub(rf"^{key}=.*\n", "", text, flags=re.MULTILINE)
    weakened.write_text(text)
    assert exposure(weakened) > MAX_EXPOSURE["edgefleet-server.service"]


def test_agent_unit_contract() -> None:
    unit = directives(AGENT_UNIT)
    expected = {"Type": "notify", "Restart": "on-failure", "StateDirectory": "edgefleet", "User": "edgefleet",
                "SupplementaryGroups": "video", "ProtectSystem": "strict", "ProtectHome": "yes",
                "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ExecReload": "/bin/kill -HUP $MAINPID",
                "RestartPreventExitStatus": "2", "DevicePolicy": "closed"}
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["WatchdogSec"] and unit["RestrictAddressFamilies"] and unit["SystemCallFilter"]
    assert unit["ExecStart"][0].endswith("edgefleet-agent run --config /etc/edgefleet/agent.yaml")
    # cameras, a Coral (USB and PCIe) and a Jetson GPU stay reachable under DevicePolicy=closed
    allowed = {entry.split()[0] for entry in unit["DeviceAllow"]}
    assert {"char-video4linux", "char-usb_device", "char-apex", "char-nvhost-*", "/dev/nvmap"} <= allowed
    assert all(entry.endswith(" rw") for entry in unit["DeviceAllow"])
    assert "PrivateDevices" not in unit and "PrivateUsers" not in unit  # both would hide the accelerators


def test_server_unit_contract() -> None:
    unit = directives(SERVER_UNIT)
    for key, value in {"User": SERVICE_USER, "Group": SERVICE_USER, "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "PrivateUsers": "yes", "PrivateDevices": "yes",
                       "RestartPreventExitStatus": "2", "Restart": "on-failure"}.items():
        assert unit.get(key) == [value], key


def test_units_init_and_config_defaults_agree_on_paths(tmp_path: Path) -> None:
    server, agent = directives(SERVER_UNIT), directives(AGENT_UNIT)
    config_file = server["ExecStart"][0].split("--config ")[1]
    assert Path(config_file) == CONFIG_DIR / "server.yaml"
    assert Path("/var/lib") / server["StateDirectory"][0] == DATA_DIR
    defaults = ServerConfig()
    assert defaults.signing_key.parent == CONFIG_DIR
    assert defaults.database_url == f"sqlite:///{DATA_DIR / 'edgefleet.db'}"
    assert defaults.storage.path.parent == DATA_DIR
    assert Path("/var/lib") / agent["StateDirectory"][0] == AgentConfig.model_fields["state_dir"].default
    # the docs name the same files
    server_doc, daemon_doc = (ROOT / "docs" / "server.md").read_text(), (ROOT / "docs" / "daemon.md").read_text()
    for path in (config_file, str(CONFIG_DIR / "signing.key"), str(DATA_DIR / "edgefleet.db")):
        assert path in server_doc, path
    assert agent["ExecStart"][0].split("--config ")[1] in daemon_doc and "/var/lib/edgefleet" in daemon_doc
    # init splits the same way: config and keys in one directory, database and artifacts in the other
    config_dir, data_dir = tmp_path / "etc", tmp_path / "lib"
    path = init(config_dir, data_dir=data_dir)
    assert sorted(p.name for p in config_dir.iterdir()) == ["server.pub", "server.yaml", "signing.key", "trust"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["edgefleet.db"]
    assert {oct(p.stat().st_mode & 0o777) for p in (path, config_dir / "signing.key")} == {"0o600"}


def test_sysusers_and_tmpfiles_make_the_users_and_directories(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    done = subprocess.run([sysusers, f"--root={root}", str(UNITS / "edgefleet.sysusers")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    group_lines = (root / "etc/group").read_text().splitlines()
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in group_lines}
    for unit in (AGENT_UNIT, SERVER_UNIT):
        user = directives(unit)["User"][0]
        assert user in users and users[user][6] == "/usr/sbin/nologin", users
    for group in ("video", "plugdev", "apex"):
        assert "edgefleet" in groups[group], groups
    done = subprocess.run([tmpfiles, "--create", f"--root={root}", str(UNITS / "edgefleet.tmpfiles")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    uid = {name: int(fields[2]) for name, fields in users.items()}

    def owner_mode(path: Path) -> tuple[int, int, str]:
        info = (root / path.relative_to("/")).stat()
        return info.st_uid, info.st_gid, oct(info.st_mode & 0o777)

    assert owner_mode(CONFIG_DIR) == (0, uid[SERVICE_USER], "0o750")
    assert owner_mode(DATA_DIR) == (uid[SERVICE_USER], uid[SERVICE_USER], "0o750")
    assert owner_mode(Path("/etc/edgefleet")) == (0, uid["edgefleet"], "0o750")
    assert owner_mode(Path("/var/lib/edgefleet")) == (uid["edgefleet"], uid["edgefleet"], "0o750")
    assert owner_mode(CONFIG_DIR / "credentials") == (0, 0, "0o700")  # read by systemd for LoadCredential=

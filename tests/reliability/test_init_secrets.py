"""Finding 9: ``edgefleet-server init --force`` kept old file modes (secrets left 0644 while it printed
"mode 0600"), followed symlinks, and created the database 0644.

The real ``edgefleet-server init`` command, run with a permissive umask over what an earlier install or an
attacker left: 0644 files, symlinks to files elsewhere, a symlinked database.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import yaml

SECRETS = ("server.yaml", "signing.key")


def init(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("edgefleet-server")
    return subprocess.run(["bash", "-c", 'umask 000; exec "$0" "$@"', str(script), "init", "--dir", str(directory),
                           *extra], capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_fresh_init_under_umask_0_is_private(tmp_path: Path) -> None:
    done = init(tmp_path / "srv")
    assert done.returncode == 0, done.stderr
    for name in (*SECRETS, "edgefleet.db"):
        assert mode(tmp_path / "srv" / name) == 0o600, name
    assert mode(tmp_path / "srv" / "server.pub") == 0o644


def test_force_rewrites_0644_secrets_and_the_database_as_0600(tmp_path: Path) -> None:
    directory = tmp_path / "srv"
    assert init(directory).returncode == 0
    old_token = yaml.safe_load((directory / "server.yaml").read_text())["admin_token"]
    old_key = (directory / "signing.key").read_bytes()
    for name in (*SECRETS, "edgefleet.db", "server.pub"):
        (directory / name).chmod(0o644)
    done = init(directory, "--force")
    assert done.returncode == 0, done.stderr
    assert "mode 0600" in done.stdout
    for name in (*SECRETS, "edgefleet.db"):
        assert mode(directory / name) == 0o600, name
    assert yaml.safe_load((directory / "server.yaml").read_text())["admin_token"] != old_token
    assert (directory / "signing.key").read_bytes() != old_key
    assert not list(directory.glob(".*.tmp"))  # no temporary file left behind


def test_force_replaces_symlinks_and_never_writes_through_them(tmp_path: Path) -> None:
    directory, elsewhere = tmp_path / "srv", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    victims = {}
    for name in (*SECRETS, "server.pub"):
        victim = elsewhere / f"victim-{name}"
        victim.write_text(f"not yours: {name}\n")
        victim.chmod(0o644)
        (directory / name).symlink_to(victim)
        victims[name] = victim
    done = init(directory, "--force")
    assert done.returncode == 0, done.stderr
    for name, victim in victims.items():
        assert victim.read_text() == f"not yours: {name}\n" and mode(victim) == 0o644  # untouched
        assert not (directory / name).is_symlink()
    for name in SECRETS:
        assert mode(directory / name) == 0o600
    assert b"PRIVATE KEY" in (directory / "signing.key").read_bytes()


def test_a_symlinked_database_is_refused_with_one_line(tmp_path: Path) -> None:
    directory = tmp_path / "srv"
    directory.mkdir()
    target = tmp_path / "somewhere.db"
    target.write_bytes(b"")
    target.chmod(0o644)
    (directory / "edgefleet.db").symlink_to(target)
    done = init(directory, "--force")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a symbolic link; refusing to use it as the database" in lines[0]
    assert target.read_bytes() == b"" and mode(target) == 0o644

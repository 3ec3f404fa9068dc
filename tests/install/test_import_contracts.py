"""The layer rules in .importlinter hold on the tree, and they do catch a breach.

The [server] install has no OpenCV and no device runtime: a contract module (agent/wire.py and the
rest) that imported one, or a server module that reached into the agent past the shared contract,
would break it. ``lint-imports`` (import-linter) checks the real import graph, indirect imports too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / ".importlinter")], cwd=tree,
                          capture_output=True, text=True, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copytree(ROOT / "edgefleet", tree / "edgefleet", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("agent", "server"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


def test_the_tree_keeps_every_contract() -> None:
    got = lint(ROOT)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-2000:]
    assert "0 broken" in got.stdout


def test_a_contract_module_importing_opencv_is_caught(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    wire = tree / "agent" / "wire.py"
    wire.write_text(wire.read_text() + "\nimport cv2  # noqa\n")
    got = lint(tree)
    assert got.returncode != 0
    assert "edgefleet.agent.wire -> cv2" in got.stdout


def test_the_server_reaching_into_the_daemon_is_caught(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    metrics = tree / "server" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nimport edgefleet.agent.daemon  # noqa\n")
    got = lint(tree)
    assert got.returncode != 0
    assert "edgefleet.server.metrics -> edgefleet.agent.daemon" in got.stdout

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_PACKAGED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks", "docs", ".bench")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel, built once per session the way pip builds it for a user (isolated build env).

    Built from a copy: setuptools keeps build/lib between builds, so a checkout's old build could lend the
    wheel old files.
    """
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_PACKAGED))
    out = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                   check=True, cwd=base, timeout=600)
    (found,) = out.glob("edgefleet-*.whl")
    return found

"""The test-load: ``python -m agent.ota.probe_load`` in a child process, so a crashing model kills only it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgefleet.agent.ota.state import CRASH_ENV


def test_load(path: Path, fmt: str, timeout_s: float) -> str | None:
    """None when the model loaded and ran once on synthetic inputs, else the reason in one line."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop(CRASH_ENV, None)
    try:
        done = subprocess.run([sys.executable, "-m", "edgefleet.agent.ota.probe_load", str(path), "--format", fmt],
                              capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"test-load did not finish within {timeout_s:.0f}s"
    if done.returncode < 0:
        return f"test-load crashed the runtime (signal {-done.returncode})"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"test-load exited with {done.returncode}"
    return None

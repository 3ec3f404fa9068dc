"""``stress-ng --cpu N`` for the benchmarks that measure under a loaded machine (started and stopped by them)."""

from __future__ import annotations

import shutil
import subprocess
import sys


def start_stress(cpus: int) -> subprocess.Popen[bytes] | None:
    """stress-ng --cpu ``cpus``, or None (with a line on stderr saying why the runs go unloaded)."""
    if not cpus:
        print("load: none (--stress 0)", file=sys.stderr)
        return None
    if shutil.which("stress-ng") is None:
        print(f"load: NONE: stress-ng is not installed, the runs go unloaded (wanted stress-ng --cpu {cpus})",
              file=sys.stderr)
        return None
    print(f"load: stress-ng --cpu {cpus} for the whole run", file=sys.stderr)
    return subprocess.Popen(["stress-ng", "--cpu", str(cpus), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_stress(stress: subprocess.Popen[bytes] | None) -> None:
    if stress is None or stress.poll() is not None:
        return
    stress.terminate()
    try:
        stress.wait(10)
    except subprocess.TimeoutExpired:
        stress.kill()
        stress.wait(10)

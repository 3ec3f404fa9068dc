"""System figures for the telemetry message: CPU, memory, the agent's RSS, temperature, disk, uptime.

Read straight from Linux's /proc and statvfs (what psutil reads there too): one compiled dependency fewer on the
device, and none to build where PyPI has no wheel (32-bit Arm).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

THERMAL_ROOT = Path("/sys/class/thermal")
PROC = Path("/proc")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_times(proc: Path = PROC) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot from ``/proc/stat``; idle and iowait are not busy."""
    try:
        with open(proc / "stat", "rb") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal; guest time is inside user
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def memory_used_mb(proc: Path = PROC) -> float | None:
    """MemTotal - MemAvailable from ``/proc/meminfo``, as ``free`` shows "used"."""
    values: dict[str, int] = {}
    try:
        with open(proc / "meminfo", "rb") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(b":")
                if name in (b"MemTotal", b"MemAvailable"):
                    values[name.decode()] = int(rest.split()[0])  # kB
    except (OSError, ValueError, IndexError):
        return None
    if len(values) < 2:
        return None
    return round((values["MemTotal"] - values["MemAvailable"]) / 1024, 1)


def rss_mb(proc: Path = PROC) -> float | None:
    """This process's resident set from ``/proc/self/statm`` (pages)."""
    try:
        with open(proc / "self" / "statm", "rb") as statm:
            return round(int(statm.read().split()[1]) * PAGE_SIZE / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def read_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """The hottest ``thermal_zone*/temp`` (millidegrees Celsius), or None where there is none."""
    hottest: float | None = None
    try:
        zones = list(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for zone in zones:
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -50.0 < value < 200.0 and (hottest is None or value > hottest):
            hottest = value
    return hottest


class SystemSampler:
    """Cheap to call once per telemetry interval (a handful of /proc and statvfs reads)."""

    def __init__(self, state_dir: Path, thermal_root: Path = THERMAL_ROOT, proc: Path = PROC) -> None:
        self.state_dir = state_dir
        self.thermal_root = thermal_root
        self.proc = proc
        self.started = time.monotonic()
        self._cpu = cpu_times(proc)  # the next sample's CPU figure covers the interval since

    def cpu_pct(self) -> float | None:
        """Busy share of all CPUs since the previous call, in percent (as ``top`` shows it, over all cores).

        A call less than a clock tick after the previous one has no interval of its own: it measures from boot
        instead, so the figure is never missing while ``/proc/stat`` can be read.
        """
        now = cpu_times(self.proc)
        if now is None:
            return None
        before = self._cpu if self._cpu is not None and now[1] > self._cpu[1] else (0, 0)
        if now[1] <= before[1]:
            return None
        self._cpu = now
        return round(min(100.0, max(0.0, 100.0 * (now[0] - before[0]) / (now[1] - before[1]))), 1)

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uptime_s": round(time.monotonic() - self.started, 1)}
        for name, value in (("cpu_pct", self.cpu_pct()), ("mem_mb", memory_used_mb(self.proc)),
                            ("rss_mb", rss_mb(self.proc))):
            if value is not None:
                out[name] = value
        try:
            usage = os.statvfs(self.state_dir)
            out["disk_free_mb"] = round(usage.f_bavail * usage.f_frsize / 2**20, 1)
        except OSError:
            out["disk_free_mb"] = None
        out["temp_c"] = read_temperature_c(self.thermal_root)
        return out

"""System figures for the telemetry message: CPU, memory, the agent's RSS, temperature, disk, uptime."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

THERMAL_ROOT = Path("/sys/class/thermal")


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

    def __init__(self, state_dir: Path, thermal_root: Path = THERMAL_ROOT) -> None:
        self.state_dir = state_dir
        self.thermal_root = thermal_root
        self.started = time.monotonic()
        self._proc = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)  # primes the counter: the next call covers the interval since

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uptime_s": round(time.monotonic() - self.started, 1)}
        try:
            out["cpu_pct"] = psutil.cpu_percent(interval=None)
            mem = psutil.virtual_memory()
            out["mem_mb"] = round((mem.total - mem.available) / 2**20, 1)
            out["rss_mb"] = round(self._proc.memory_info().rss / 2**20, 1)
        except (psutil.Error, OSError):
            pass
        try:
            out["disk_free_mb"] = round(psutil.disk_usage(str(self.state_dir)).free / 2**20, 1)
        except OSError:
            out["disk_free_mb"] = None
        out["temp_c"] = read_temperature_c(self.thermal_root)
        return out

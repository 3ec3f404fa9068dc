"""The device clock, and whether it is known to be right.

A Raspberry Pi has no real-time clock: until NTP syncs, time can be far in the past. ``SystemClock``
reports synchronized when the kernel says so (``adjtimex``: any state but TIME_ERROR) or systemd-timesyncd
left ``/run/systemd/timesync/synchronized``. Expiry is then judged against the newest trusted time
(agent/ota/verify.py: ``TrustedTime``). Tests inject a clock of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from pathlib import Path
from typing import Protocol

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized


class Clock(Protocol):
    def now(self) -> float: ...

    def synchronized(self) -> bool: ...


class SystemClock:
    def __init__(self, flag: Path = TIMESYNC_FLAG) -> None:
        self.flag = flag
        self._libc: ctypes.CDLL | None = None
        name = ctypes.util.find_library("c")
        if name:
            try:
                self._libc = ctypes.CDLL(name, use_errno=True)
            except OSError:
                self._libc = None

    def now(self) -> float:
        return time.time()

    def synchronized(self) -> bool:
        if self.flag.exists():
            return True
        if self._libc is None or not hasattr(self._libc, "adjtimex"):
            return False
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = int(self._libc.adjtimex(timex))
        return 0 <= state != TIME_ERROR


class FixedClock:
    """A clock a test sets: ``now`` (or an offset from the real time) and whether it claims to be synced."""

    def __init__(self, now: float | None = None, *, offset_s: float = 0.0, synced: bool = True) -> None:
        self.fixed = now
        self.offset_s = offset_s
        self.synced = synced

    def now(self) -> float:
        return (self.fixed if self.fixed is not None else time.time()) + self.offset_s

    def synchronized(self) -> bool:
        return self.synced

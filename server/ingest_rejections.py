"""Refused device messages: counted by reason (``/metrics``), per enrolled device (its row, its dashboard page),
and logged at most once per device per minute, so a device that floods bad messages fills no log.

Messages from ids that are not enrolled are counted and logged together (one line a minute), whatever
the number of ids: a client spraying made-up ids grows neither the log nor this module's memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.server.ingest_validation import REASONS, Rejected

log = logging.getLogger("edgefleet.server.ingest")
UNENROLLED = object()  # the one log key every unenrolled id shares


@dataclass
class _Logged:
    at: float
    suppressed: int = 0


class Rejections:
    def __init__(self, *, log_interval_s: float = 60.0, max_tracked: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log_interval_s = log_interval_s
        self.max_tracked = max_tracked
        self.clock = clock
        self.by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._device_counts: dict[str, tuple[int, str, float]] = {}
        self._logged: OrderedDict[object, _Logged] = OrderedDict()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, device_id: str, rejected: Rejected, *, enrolled: bool, at: float) -> None:
        self.by_reason[rejected.reason] = self.by_reason.get(rejected.reason, 0) + 1
        line = f"{rejected.detail} ({rejected.reason})"
        if enrolled:
            count, _, _ = self._device_counts.get(device_id, (0, "", 0.0))
            self._device_counts[device_id] = (count + 1, line, at)
            self._log(device_id, f"from device {device_id!r}", line)
        else:  # any topic level is an id here, up to the broker's topic length: the line shows its start
            self._log(UNENROLLED, f"from ids that are not enrolled, nothing stored (this one {device_id[:80]!r})",
                      line)

    def take_device_counts(self) -> dict[str, tuple[int, str, float]]:
        """(refused, last reason, when) per enrolled device since the last call, for the device rows."""
        counts, self._device_counts = self._device_counts, {}
        return counts

    def _log(self, key: object, source: str, line: str) -> None:
        now = self.clock()
        seen = self._logged.get(key)
        if seen is not None and now - seen.at < self.log_interval_s:
            seen.suppressed += 1
            return
        if seen is None or not seen.suppressed:
            log.warning("ingest: refused a message %s: %s", source, line)
        else:
            log.warning("ingest: refused %d messages %s in the last %.0fs; the last: %s", seen.suppressed + 1,
                        source, now - seen.at, line)
        self._logged[key] = _Logged(at=now)
        self._logged.move_to_end(key)
        while len(self._logged) > self.max_tracked:
            self._logged.popitem(last=False)

"""A dependency-free sd_notify client: READY, WATCHDOG, STOPPING and STATUS over NOTIFY_SOCKET.

Nothing happens without ``NOTIFY_SOCKET`` in the environment. A name that starts with ``@`` is
an abstract socket (the ``@`` becomes a NUL byte). Send errors are logged once and otherwise
ignored: a daemon must not die because its supervisor went away.

Sends never block the caller (the main loop, which also turns SIGTERM into a stop): a datagram
socket whose reader falls behind fills up (``net.unix.max_dgram_qlen``, 10 by default), and a
blocking ``sendto`` would then hang the daemon until the supervisor reads again. A watchdog ping
or a status line that finds the queue full is dropped; a state change (READY, RELOADING,
STOPPING) waits up to ``STATE_WAIT_S`` for room first.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)
STATE_WAIT_S = 1.0


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET") or None
        self._address: str | bytes | None = None
        if raw is not None:
            self._address = b"\0" + raw[1:].encode() if raw.startswith("@") else raw
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6  # ping at half the timeout
        self._sock: socket.socket | None = None
        self._warned = False
        self.dropped = 0  # datagrams not sent because the supervisor's queue was full

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str, wait_s: float = 0.0) -> bool:
        """Send ``KEY=value`` lines as one datagram without blocking (or for at most ``wait_s`` while the
        supervisor's queue is full); True when it was sent."""
        if self._address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            if self._sock is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                self._sock = socket.socket(socket.AF_UNIX, kind)
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    self._sock.sendto(data, self._address)
                    return True
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.dropped += 1
                        log.debug("sd_notify queue full, dropped %s", lines[0])
                        return False
                    select.select([], [self._sock], [], min(left, 0.05))
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []), wait_s=STATE_WAIT_S)

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", wait_s=STATE_WAIT_S)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []), wait_s=STATE_WAIT_S)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.support.net import SLOWDOWN


class NotifySocket:
    """Reads every datagram as it arrives, in a thread, as systemd does (an unread socket fills up)."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.env_value = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        self._closed = False
        self.sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages.append(data.decode())
                self._arrived.notify_all()

    def collect(self, until: str, timeout: float = 10.0) -> list[str]:
        """Wait until a datagram contains the line ``until``; all received so far."""
        timeout *= SLOWDOWN
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not any(until in m.split("\n") for m in self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {until} within {timeout}s; got {self.messages}")
                self._arrived.wait(left)
            return list(self.messages)

    def drain(self, seconds: float) -> list[str]:
        """Whatever arrives during ``seconds``, added to what came before."""
        time.sleep(seconds)
        with self._arrived:
            return list(self.messages)

    def lines(self) -> list[str]:
        with self._arrived:
            return [line for message in self.messages for line in message.split("\n")]

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=2)
        self.sock.close()

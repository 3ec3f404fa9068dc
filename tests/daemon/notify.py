"""A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
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

    def collect(self, until: str, timeout: float = 10.0) -> list[str]:
        """Receive datagrams until one contains the line ``until``; all received so far."""
        deadline = time.monotonic() + timeout
        while not any(until in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {until} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def drain(self, seconds: float) -> list[str]:
        """Receive whatever arrives during ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.messages for line in message.split("\n")]

    def close(self) -> None:
        self.sock.close()

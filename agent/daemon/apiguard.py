"""Who may use the local API, and for how long a client may take: the guard of agent/daemon/api.py.

- **Host**: a browser on the box can be made to send requests to ``127.0.0.1:8500`` from any web page by
  DNS rebinding (``attacker.example`` resolving to 127.0.0.1); its ``Host`` header then names the
  attacker's host. Only loopback names, the configured listen host, ``api.allowed_hosts`` and (when the API
  listens on every interface) IP literals are accepted; anything else is a 421. A request without
  ``Host`` (HTTP/1.0 tools) is not a browser's and passes.
- **Token**: with ``api.token`` (or ``api.token_file``) set, every request needs
  ``Authorization: Bearer <token>`` (401 otherwise), for boxes where other users run code.
- **Deadlines**: the request line and headers must arrive within ``api.header_timeout_s`` and a body
  within ``api.body_timeout_s``; past that the connection is shut down by one watchdog thread (a client
  trickling a byte every few seconds would otherwise hold its thread for ever).
- **Connections**: at most ``api.max_connections`` at once; others get a 503 at once.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from edgefleet.agent.config import ApiSection
from edgefleet.agent.errors import ConfigError

LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
WILDCARDS = {"", "0.0.0.0", "::", "*"}


def host_of(header: str) -> str:
    """The host part of a Host header value, lower-case: ``[::1]:8500`` → ``::1``, ``Box:80`` → ``box``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare IPv6 literal or a name without a port


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def read_token(token: str | None, token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            first = token_file.read_text().strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"api.token_file {token_file}: {exc.strerror or exc}") from exc
        if not first or not first[0].strip():
            raise ConfigError(f"api.token_file {token_file} is empty")
        return first[0].strip()
    return token or None


class Deadlines:
    """Sockets that must finish a step by a time; one thread shuts down those that do not."""

    def __init__(self) -> None:
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self.cut = 0
        self._thread = threading.Thread(target=self._run, name="api-deadlines", daemon=True)
        self._thread.start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._cond:
            self._due[id(sock)] = (time.monotonic() + seconds, sock)
            self._cond.notify()

    def disarm(self, sock: socket.socket) -> None:
        with self._cond:
            self._due.pop(id(sock), None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                late = [key for key, (due, _) in self._due.items() if due <= now]
                for key in late:
                    _due, sock = self._due.pop(key)
                    self.cut += 1
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns, its thread ends
                    except OSError:
                        pass
                soonest = min((due for due, _ in self._due.values()), default=now + 3600.0)
                self._cond.wait(timeout=max(0.01, soonest - now))


class ApiGuard:
    def __init__(self, *, listen: str, allowed_hosts: Iterable[str] = (), token: str | None = None,
                 header_timeout_s: float = 10.0, body_timeout_s: float = 30.0, max_connections: int = 512) -> None:
        listen_host = host_of(listen.rpartition(":")[0] or "")
        self.any_interface = listen_host in WILDCARDS
        self.hosts = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()} | LOOPBACK_NAMES
        if not self.any_interface:
            self.hosts.add(listen_host)
        self.token = token
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.deadlines = Deadlines()
        self._connections = 0
        self._lock = threading.Lock()

    def host_refusal(self, header: str | None) -> str | None:
        """None when a request with this Host header may be served; else the one-line reason (421)."""
        if header is None:
            return None
        host = host_of(header)
        address = _ip(host)
        if host in self.hosts or host.rstrip(".") in self.hosts:
            return None
        if address is not None and (address.is_loopback or self.any_interface):
            return None
        return f"Host {header.strip()[:80]!r} is not this agent's (api.allowed_hosts)"

    def token_refusal(self, authorization: str | None) -> str | None:
        """None when no token is configured or the request carries it; else the reason (401)."""
        if self.token is None:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return "a bearer token is required (api.token)"
        return None

    def enter(self) -> bool:
        with self._lock:
            if self._connections >= self.max_connections:
                return False
            self._connections += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._connections -= 1

    def close(self) -> None:
        self.deadlines.stop()


def api_guard(section: ApiSection) -> ApiGuard:
    return ApiGuard(listen=section.listen or "127.0.0.1:0", allowed_hosts=section.allowed_hosts,
                    token=read_token(section.token, section.token_file), header_timeout_s=section.header_timeout_s,
                    body_timeout_s=section.body_timeout_s, max_connections=section.max_connections)

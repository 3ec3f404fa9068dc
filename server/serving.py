"""uvicorn as the server runs it: header deadline and size, keep-alive, connection cap, bounded shutdown.

uvicorn itself bounds neither the time a client may take to send its request line and headers (a client
that trickles one header byte every few seconds holds its connection for ever: slowloris) nor their size
with httptools. ``guarded_protocol`` is uvicorn's httptools protocol with both: the headers of every
request must arrive within ``http.header_timeout_s`` (counted from the connection's start, then from the
first byte of each further request on it) and within ``http.max_header_kb``; otherwise the client gets a
408 or 431 and the connection is closed. The body is bounded by ``server.limits``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgefleet.server import sandbox
from edgefleet.server.config import HttpSection
from edgefleet.server.problems import MEDIA_TYPE, problem_bytes

log = logging.getLogger("edgefleet.server.http")


def _raw_problem(status: int, reason: str, detail: str) -> bytes:
    body = problem_bytes(status, detail, title=reason)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHttpTools(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_header_bytes = 64 * 1024
    cut = {"timeout": 0, "too_large": 0}  # connections cut, for /metrics and tests (shared by the class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing at all is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # never inside another response on the connection
            self.transport.write(_raw_problem(status, reason, detail))
        self.transport.close()

    def _headers_late(self) -> None:
        self._header_timer = None
        self.cut["timeout"] += 1
        log.debug("cut %s: headers not complete within %.1fs", self.client, self.header_timeout_s)
        self._refuse(408, "Request Timeout", f"the request headers did not arrive within {self.header_timeout_s:g}s")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self.cut["too_large"] += 1
            self._refuse(431, "Request Header Fields Too Large",
                         f"request line and headers are larger than {self.max_header_bytes} bytes")
            raise ValueError("headers too large")  # stops the parser (httptools reports a callback error)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser error we raised ourselves: the answer is already written
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()


def guarded_protocol(http: HttpSection) -> type[GuardedHttpTools]:
    return type("GuardedHttpToolsConfigured", (GuardedHttpTools,), {
        "header_timeout_s": http.header_timeout_s, "max_header_bytes": http.max_header_kb * 1024})


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        sandbox.kill_all()  # a model being inspected or optimized ends now, so its request ends and shutdown is quick
        super().handle_exit(sig, frame)


def serve_on(app: Any, sock: socket.socket, *, http: HttpSection, log_level: str) -> bool:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT; False when uvicorn did not start.

    ``log_config=None``: uvicorn's loggers propagate to the root handler that logsetup configured."""
    config = uvicorn.Config(app, log_level=log_level, log_config=None, access_log=False,
                            http=guarded_protocol(http), timeout_keep_alive=max(1, math.ceil(http.keep_alive_s)),
                            limit_concurrency=http.max_connections,
                            timeout_graceful_shutdown=max(1, math.ceil(http.shutdown_timeout_s)))
    server = _Server(config)
    server.run(sockets=[sock])
    return bool(server.started)

"""A recording, replaying HTTP proxy: the man in the middle on a device's plain-HTTP link to the server.

    proxy = MitmProxy("http://127.0.0.1:8080")      # devices use proxy.url as server.url
    proxy.exchanges("/manifest")                    # what went through: request + response, in order
    proxy.serve("/manifest", captured)              # answer that path with a recorded (or forged) response
    proxy.rewrite("/v1/trust/roots", fn)            # fn(Exchange) -> bytes: change the real answer
    proxy.forward("/manifest")                      # back to passing it through

A real server on a loopback port (``http.server``), forwarding each request to the upstream with
``http.client``; HTTP/1.1 keep-alive like the device's ``requests`` session expects.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


@dataclass
class Exchange:
    method: str
    path: str
    request_headers: dict[str, str]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    forged: bool = False


@dataclass
class Canned:
    status: int
    body: bytes
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up mid-answer is no news
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class MitmProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._log: list[Exchange] = []
        self._canned: dict[str, Canned] = {}
        self._rewrites: dict[str, Callable[[Exchange], bytes]] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    # --- what a test does ----------------------------------------------------------------------

    def exchanges(self, suffix: str = "") -> list[Exchange]:
        with self._lock:
            return [e for e in self._log if e.path.split("?", 1)[0].endswith(suffix)]

    def serve(self, suffix: str, exchange: Exchange | bytes, *, status: int = 200,
              headers: dict[str, str] | None = None) -> None:
        """Answer every request whose path ends with ``suffix`` with a recorded exchange or these bytes."""
        if isinstance(exchange, Exchange):
            canned = Canned(exchange.status, exchange.body, {**exchange.headers, "ETag": '"mitm-replay"'})
        else:
            canned = Canned(status, exchange, headers or {"Content-Type": "application/json", "ETag": '"mitm"'})
        with self._lock:
            self._canned[suffix] = canned

    def rewrite(self, suffix: str, change: Callable[[Exchange], bytes]) -> None:
        with self._lock:
            self._rewrites[suffix] = change

    def forward(self, suffix: str | None = None) -> None:
        with self._lock:
            for table in (self._canned, self._rewrites):
                for key in [k for k in table if suffix is None or k == suffix]:
                    del table[key]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- the server ----------------------------------------------------------------------------

    def _match(self, path: str) -> tuple[Canned | None, Callable[[Exchange], bytes] | None]:
        bare = path.split("?", 1)[0]
        with self._lock:
            canned = next((c for s, c in self._canned.items() if bare.endswith(s)), None)
            change = next((f for s, f in self._rewrites.items() if bare.endswith(s)), None)
        return canned, change

    def _exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Exchange:
        seen = Exchange(method, path, headers)
        canned, change = self._match(path)
        if canned is not None:
            seen.status, seen.body, seen.headers, seen.forged = canned.status, canned.body, dict(canned.headers), True
        else:
            connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
            try:
                forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                connection.request(method, path, body=body or None, headers=forwarded)
                reply = connection.getresponse()
                seen.status, seen.body = reply.status, reply.read()
                seen.headers = {k: v for k, v in reply.getheaders() if k.lower() not in HOP_BY_HOP}
            finally:
                connection.close()
            if change is not None:
                seen.body, seen.forged = change(seen), True
        with self._lock:
            self._log.append(seen)
        return seen

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    seen = proxy._exchange(self.command, self.path, dict(self.headers.items()), body)
                except OSError as exc:
                    self.send_error(502, f"upstream: {exc}")
                    return
                self.send_response(seen.status)
                for key, value in seen.headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(seen.body)))
                self.end_headers()
                if self.command != "HEAD" and seen.status not in (204, 304):
                    self.wfile.write(seen.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, *_args: object) -> None:
                pass

        return Handler

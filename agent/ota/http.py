"""The update client's HTTP: a small keep-alive client on the standard library's ``http.client``.

What the device needs of HTTP and nothing more, so a device does not carry requests, urllib3, idna and
charset_normalizer (about 4 MB of resident memory on x86, more on a 32-bit Pi) for a poll every few minutes:

- connections kept alive per scheme, host and port, taken by one request at a time (the update thread and the
  sample upload may overlap); a kept connection the server closed meanwhile is replaced once, transparently;
- ``timeout``: one figure, or ``(connect, read)`` where read is the longest wait for the next byte;
- TLS verified against the system's CA store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` choose another, as with
  OpenSSL everywhere), hostname checked;
- redirects followed for GET and HEAD (at most 5), the ``Authorization`` header dropped when the host changes;
- ``http_proxy`` / ``https_proxy`` / ``no_proxy`` from the environment (a CONNECT tunnel for HTTPS).

Errors are ``HttpError`` (a ``ConnectionError``), so callers catch ``OSError`` for every transport failure.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json as jsonlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import SplitResult, urlencode, urljoin, urlsplit

REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
Timeout = float | tuple[float, float] | None
Key = tuple[str, str, int, str]  # scheme, host, port and the proxy it goes through ("" direct)


class HttpError(ConnectionError):
    """A transport failure: refused, reset, timed out, a broken answer, a bad URL or too many redirects."""


class Headers(dict[str, str]):
    """Response headers, looked up without regard to case (``ETag`` or ``etag``)."""

    def __init__(self, items: Mapping[str, str] | list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        for name, value in (items.items() if isinstance(items, Mapping) else items or []):
            self[name] = value

    def __setitem__(self, name: str, value: str) -> None:
        super().__setitem__(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """One answer. Read it with ``iter_content``, ``content``, ``json()`` or ``text``; ``close()`` (or ``with``)
    hands a fully read connection back for the next request."""

    def __init__(self, url: str, raw: http.client.HTTPResponse, release: Callable[[bool], None]) -> None:
        self.url = url
        self.raw = raw
        self.status_code = raw.status
        self.headers = Headers(raw.getheaders())
        self._content: bytes | None = None  # the body once read whole (a test's man in the middle may replace it)
        self._release: Callable[[bool], None] | None = release

    def iter_content(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        if self._content is not None:
            for start in range(0, len(self._content), chunk_size):
                yield self._content[start:start + chunk_size]
            return
        try:
            while True:
                block = self.raw.read(chunk_size)
                if not block:
                    break
                yield block
        except (OSError, http.client.HTTPException) as exc:
            self._broken()
            raise HttpError(f"{self.url}: {_describe(exc)}") from exc
        if self.raw.length:  # http.client ends a body cut short quietly: the bytes still owed say so
            self._broken()
            raise HttpError(f"{self.url}: the connection closed with {self.raw.length} bytes of the body unsent")

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_content())
            self.close()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        if not self.raw.isclosed() and self.raw.length == 0:
            self.raw.read()  # a 204, 304 or HEAD answer: nothing to read, and then the connection is free
        release(self.raw.isclosed() and not self.raw.will_close)

    def _broken(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(False)

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """Keep-alive HTTP(S) with the subset of ``requests.Session`` the update client uses."""

    def __init__(self, user_agent: str = "edgefleet-agent") -> None:
        self.user_agent = user_agent
        self._idle: dict[Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: Any = None

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | None = None, json: Any = None, data: bytes | None = None,
                stream: bool = False, timeout: Timeout = 30.0) -> Response:
        sent = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **(headers or {})}
        if json is not None:
            data = jsonlib.dumps(json, separators=(",", ":")).encode()
            sent.setdefault("Content-Type", "application/json")
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, sent, data, timeout)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECTS or not location or method not in ("GET", "HEAD"):
                break
            response.content  # noqa: B018 - read the redirect's body so its connection can be kept
            target = urljoin(url, location)
            if urlsplit(target).netloc != urlsplit(url).netloc:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = target
        else:
            raise HttpError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
        if not stream:
            response.content  # noqa: B018 - a non-streamed answer is read whole, like requests does
        return response

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections ---------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
              timeout: Timeout) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"{method} {url}: not an http(s) URL")
        proxy = _proxy_for(parts)
        try:
            key: Key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                        proxy.geturl() if proxy is not None else "")
        except ValueError as exc:
            raise HttpError(f"{method} {url}: {exc}") from exc
        connect_s, read_s = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        target = url if proxy is not None and parts.scheme == "http" else (parts.path or "/") + (
            f"?{parts.query}" if parts.query else "")
        extra = dict(headers)
        if proxy is not None and parts.scheme == "http" and proxy.username:
            extra["Proxy-Authorization"] = _basic(proxy)
        for attempt in (0, 1):
            connection, reused = self._connection(key, proxy, connect_s)
            try:
                if connection.sock is None:
                    connection.connect()
                connection.sock.settimeout(read_s)
                connection.request(method, target, body=body, headers=extra)
                raw = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                                    BrokenPipeError))
                if attempt == 0 and stale:
                    continue  # the server closed a kept connection meanwhile: once more on a fresh one
                raise HttpError(f"{method} {url}: {_describe(exc)}") from exc
            return Response(url, raw, functools.partial(self._release, key, connection))
        raise AssertionError("unreachable")

    def _connection(self, key: Key, proxy: SplitResult | None,
                    connect_s: float | None) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port, _ = key
        if proxy is not None:
            proxy_port = proxy.port or (443 if proxy.scheme == "https" else 80)
            if scheme == "https":
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    proxy.hostname or "", proxy_port, timeout=connect_s, context=self._tls_context())
                tunnel_headers = {"Proxy-Authorization": _basic(proxy)} if proxy.username else None
                connection.set_tunnel(host, port, headers=tunnel_headers)
                return connection, False
            return http.client.HTTPConnection(proxy.hostname or "", proxy_port, timeout=connect_s), False
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=connect_s, context=self._tls_context()), False
        return http.client.HTTPConnection(host, port, timeout=connect_s), False

    def _release(self, key: Key, connection: http.client.HTTPConnection, reusable: bool) -> None:
        """Back to the idle pool when ``reusable`` (its answer read whole, keep-alive), else closed."""
        if not reusable:
            connection.close()
            return
        with self._lock:
            self._idle.setdefault(key, []).append(connection)

    def _tls_context(self) -> Any:
        if self._tls is None:
            import ssl

            self._tls = ssl.create_default_context()
        return self._tls


def _proxy_for(parts: SplitResult) -> SplitResult | None:
    """The proxy the environment names for this URL, as curl and requests read it; None to go direct."""
    env = {k.lower(): v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    host = (parts.hostname or "").lower()
    for entry in (e.strip().lower() for e in env.get("no_proxy", "").split(",")):
        if entry == "*" or (entry and (host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")))):
            return None
    if host in ("localhost", "127.0.0.1", "::1"):
        return None
    proxy = env.get(f"{parts.scheme}_proxy") or env.get("all_proxy")
    if not proxy:
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _basic(proxy: SplitResult) -> str:
    credentials = f"{proxy.username}:{proxy.password or ''}".encode()
    return "Basic " + base64.b64encode(credentials).decode()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""A minimal keep-alive HTTP/1.1 client on asyncio streams.

The simulator sends thousands of requests a second from one core; httpx costs about a millisecond
of CPU per request, this a tenth of that, so the simulator is not what limits the figures. It speaks
just what the server answers with: Content-Length bodies, and chunked bodies for completeness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the reply was not HTTP/1.1 as expected."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    queued_s: float = 0.0  # waiting for one of the pool's connections (the simulator's queue, not the server's)


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpPool:
    """Up to ``size`` keep-alive connections to one origin, shared by many virtual devices."""

    def __init__(self, base_url: str, size: int = 64, timeout: float = 30.0, idle_s: float = 4.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// origins are supported, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.origin = f"http://{self.host}:{self.port}"
        self.timeout = timeout
        self._idle: list[tuple[_Conn, float]] = []
        self.idle_s = idle_s
        self._slots = asyncio.Semaphore(size)

    def path_of(self, url: str) -> str:
        """``url`` as a path on this origin (absolute URLs from manifests must point here)."""
        if url.startswith("/"):
            return url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.hostname}:{parts.port or 80}" != self.origin:
            raise HttpError(f"{url} is not on {self.origin}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> Reply:
        head = f"{method} {self.path_of(url)} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        queued = time.perf_counter()
        async with self._slots:
            queued = time.perf_counter() - queued
            for attempt in (0, 1):  # a kept-alive connection the server closed is retried once on a new one
                conn = self._take() if attempt == 0 else None
                fresh = conn is None
                if conn is None:
                    conn = await self._connect()
                try:
                    reply, keep = await asyncio.wait_for(self._exchange(conn, data), self.timeout)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    conn[1].close()
                    if fresh:
                        raise HttpError(f"{method} {url}: {exc!r}") from exc
                    continue
                if keep:
                    self._idle.append((conn, time.monotonic()))
                else:
                    conn[1].close()
                reply.queued_s = queued
                return reply
        raise HttpError(f"{method} {url}: no reply")  # pragma: no cover - the loop always returns or raises

    def _take(self) -> _Conn | None:
        """An idle connection the server has not timed out yet (uvicorn closes them after 5 s)."""
        while self._idle:
            conn, used = self._idle.pop()
            if time.monotonic() - used < self.idle_s and not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    async def _connect(self) -> _Conn:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise HttpError(f"cannot connect to {self.origin}: {exc!r}") from exc

    @staticmethod
    async def _exchange(conn: _Conn, data: bytes) -> tuple[Reply, bool]:
        reader, writer = conn
        writer.write(data)
        status_line = await reader.readline()
        if not status_line.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP reply: {status_line[:60]!r}")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
            body = b"".join(chunks)
        else:
            body = b""
        return Reply(status, headers, body), headers.get("connection", "").lower() != "close"

    async def close(self) -> None:
        for (_, writer), _used in self._idle:
            writer.close()
        self._idle.clear()

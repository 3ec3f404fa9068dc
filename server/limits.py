"""Request bodies are bounded before any route parses them: a pure ASGI middleware.

Every operation has a body limit (``BODY_LIMITS``, keyed by method and path template; others get
``DEFAULT_LIMIT``). A declared ``Content-Length`` over it is refused at once, before a byte of the body is
read; a chunked body is counted as it arrives. Buffered bodies (JSON, forms) are read whole by this
middleware within ``http.body_timeout_s``, their JSON nesting checked, then handed to the route; bodies
of every request together may hold at most ``http.max_buffered_mb``. Streamed bodies (model uploads, which
the route spools to disk) are only counted. Refusals are one-line RFC 9457 problem documents, and the
connection is closed after them (the rest of the body is never read).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.exceptions import HTTPException

from edgefleet.server.config import HttpSection
from edgefleet.server.problems import MEDIA_TYPE, problem_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KB = 1024
MB = 1024 * KB
REFUSED: Counter[int] = Counter()  # requests refused here, by status, in this process (/metrics)


@dataclass(frozen=True)
class Limit:
    max_bytes: int
    stream: bool = False  # counted while the route streams it to disk, never held whole in memory


DEFAULT_LIMIT = Limit(16 * KB)
# Unauthenticated routes take a few KB; a device's routes what the agent sends; operator routes what a
# large fleet needs (a rollout naming 100,000 device ids). The upload limit comes from max_upload_mb.
BODY_LIMITS: dict[tuple[str, str], Limit] = {
    ("POST", "/v1/enroll"): Limit(8 * KB),  # id, class, tags and the hardware probe (~0.5-2 KB)
    ("POST", "/login"): Limit(4 * KB),
    ("POST", "/v1/devices/{device_id}/reports"): Limit(64 * KB),
    ("POST", "/v1/devices/{device_id}/samples"): Limit(8 * MB),
    ("POST", "/v1/devices/{device_id}/commands"): Limit(64 * KB),
    ("POST", "/v1/rollouts"): Limit(8 * MB),
    ("POST", "/v1/samples/labels"): Limit(2 * MB),
}
UPLOAD_ROUTE = ("POST", "/v1/models/{name}/versions")
MULTIPART_SLACK = MB  # part headers and the small parts (labels, meta) beside the model file

# a JSON string (escapes included) or one bracket: strings are skipped whole, so brackets inside them never count
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[\]}]')
_NOT_JSON = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def json_depth(body: bytes, limit: int) -> int:
    """The nesting depth of ``body`` read as JSON, counting up to ``limit + 1`` (then it stops)."""
    depth = deepest = 0
    for token in _JSON_TOKENS.finditer(body):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


class TooLarge(HTTPException):
    """Raised into a streaming route's ``receive`` when its body passes the limit (FastAPI passes it through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes for this route")


class Budget:
    """Bytes of request bodies held in memory by all requests together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.total:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


def problem(status: int, title: str, detail: str,
            instance: str | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = problem_bytes(status, detail, instance=instance, title=title)
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return headers, body


async def send_problem(send: Send, status: int, title: str, detail: str,
                       extra: list[tuple[bytes, bytes]] | None = None, instance: str | None = None) -> None:
    headers, body = problem(status, title, detail, instance)
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value)
    return None


def template_regex(template: str) -> re.Pattern[str]:
    """``/v1/devices/{device_id}/samples`` → a regex matching one concrete path of it."""
    parts = re.split(r"\{[^}/]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


class BodyLimits:
    """The middleware. Routes are found from the table's own path templates (tests check that each names a
    real route), so nothing here depends on how the framework stores its routes."""

    def __init__(self, app: ASGIApp, *, http: HttpSection, upload_bytes: int) -> None:
        self.app = app
        self.http = http
        self.budget = Budget(int(http.max_buffered_mb * MB))
        limits = {**BODY_LIMITS, UPLOAD_ROUTE: Limit(upload_bytes + MULTIPART_SLACK, stream=True)}
        self.table = [(method, template_regex(template), limit) for (method, template), limit in limits.items()]

    def limit_for(self, method: str, path: str) -> Limit:
        for wanted, regex, limit in self.table:
            if method == wanted and regex.match(path):
                return limit
        return DEFAULT_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length_header = _header(scope, b"content-length")
        chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
        if not chunked and length_header in (None, b"0"):
            await self.app(scope, receive, send)  # no body: the hot path (check-ins, downloads) pays nothing more
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = int(length_header) if length_header and length_header.isdigit() else None
        if declared is not None and declared > limit.max_bytes:
            await self._refuse(scope, send, 413, "Content Too Large",
                               f"request body of {declared} bytes is larger than the limit of {limit.max_bytes} "
                               "bytes for this route")
            return
        if limit.stream:
            await self._streamed(scope, receive, send, limit)
            return
        reserve = declared if declared is not None else limit.max_bytes
        if not self.budget.take(reserve):
            await self._refuse(scope, send, 503, "Service Unavailable",
                               "the server is holding too many request bodies; retry shortly", [(b"retry-after", b"2")])
            return
        try:
            await self._buffered(scope, receive, send, limit)
        finally:
            self.budget.give(reserve)

    async def _refuse(self, scope: Scope, send: Send, status: int, title: str, detail: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        REFUSED[status] += 1
        await send_problem(send, status, title, detail, extra, instance=scope.get("path"))

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, limit: Limit) -> None:
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.http.body_timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit.max_bytes:
                    await self._refuse(scope, send, 413, "Content Too Large",
                                       f"request body is larger than the limit of {limit.max_bytes} bytes "
                                       "for this route")
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            await self._refuse(scope, send, 408, "Request Timeout",
                               f"the request body did not arrive within {self.http.body_timeout_s:g}s")
            return
        body = b"".join(chunks)
        del chunks
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type not in _NOT_JSON and json_depth(body, self.http.max_json_depth) > self.http.max_json_depth:
            await self._refuse(scope, send, 400, "Bad Request",
                               f"JSON body is nested deeper than {self.http.max_json_depth} levels")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect comes

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: Limit) -> None:
        seen = 0
        tripped = False

        async def counted() -> Message:
            nonlocal seen, tripped
            with anyio.move_on_after(self.http.body_timeout_s) as idle:
                message = await receive()
            if idle.cancelled_caught:
                tripped = True
                REFUSED[408] += 1
                raise HTTPException(408, f"no byte of the upload arrived for {self.http.body_timeout_s:g}s")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit.max_bytes:
                    tripped = True
                    REFUSED[413] += 1
                    raise TooLarge(limit.max_bytes)
            return message

        async def closing(message: Message) -> None:
            if tripped and message["type"] == "http.response.start":  # the rest of the body is never read: close
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted, closing)

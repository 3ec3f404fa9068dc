"""Commands from the server (``commands`` topic): parse, dispatch to a handler, answer with an event.

Handlers run one at a time on their own thread, so a slow one (``check_update`` talks HTTP)
never stalls the MQTT loop. Every command is answered: ``command.ack`` with the handler's
result, or ``command.error`` with the command id and the reason (unknown type, bad payload,
a handler that raised).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from edgefleet.agent.wire import Command

log = logging.getLogger(__name__)

Handler = Callable[[Command], "dict[str, Any] | None"]
Emit = Callable[..., None]  # (type, **fields) -> None: the telemetry ``event``


class CommandDispatcher:
    def __init__(self, emit: Emit, max_pending: int = 64) -> None:
        self._emit = emit
        self._handlers: dict[str, Handler] = {}
        self._queue: queue.Queue[Command | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self.handled = 0
        self.failed = 0

    def register(self, type: str, handler: Handler) -> None:
        self._handlers[type] = handler

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgefleet-commands", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)

    def submit_raw(self, payload: bytes) -> None:
        """Parse one message from the ``commands`` topic and queue it (called from the MQTT loop)."""
        doc: Any = None
        try:
            doc = json.loads(payload)
            command = Command.model_validate(doc)
        except (ValueError, ValidationError) as exc:
            cid = doc.get("id") if isinstance(doc, dict) else None
            ctype = doc.get("type") if isinstance(doc, dict) else None
            self.failed += 1
            self._emit("command.error", id=cid if isinstance(cid, str) else None,
                       command=ctype if isinstance(ctype, str) else None,
                       reason=f"invalid command: {_one_line(exc)}")
            return
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self.failed += 1
            self._emit("command.error", id=command.id, command=command.type, reason="too many pending commands")

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                return
            self.dispatch(command)

    def dispatch(self, command: Command) -> None:
        handler = self._handlers.get(command.type)
        if handler is None:
            self.failed += 1
            known = ", ".join(sorted(self._handlers)) or "none"
            self._emit("command.error", id=command.id, command=command.type,
                       reason=f"unknown command type {command.type!r} (known: {known})")
            return
        try:
            result = handler(command)
        except Exception as exc:
            self.failed += 1
            log.warning("command %s (%s) failed: %s", command.id, command.type, exc)
            self._emit("command.error", id=command.id, command=command.type, reason=_one_line(exc))
            return
        self.handled += 1
        self._emit("command.ack", id=command.id, command=command.type, result=result or {})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

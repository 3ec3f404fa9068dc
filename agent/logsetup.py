"""One logging set-up for the agent and the server, fitted to where stderr goes.

``log.format`` in either config:

- ``auto`` (default): ``journal`` when stderr is the stream systemd connected to the journal (its
  ``JOURNAL_STREAM`` names stderr's device and inode), else ``text``;
- ``text``: ``2024-05-01 12:00:00,123 WARNING agent.daemon: message``, for a terminal or a file;
- ``journal``: ``<4>agent.daemon: message``: the sd-daemon priority prefix that journald turns
  into the entry's priority (so ``journalctl -p warning`` filters), and no timestamp (journald has
  one); every line of a multi-line message (a traceback) carries the prefix;
- ``json``: one JSON object per line (``ts``, ``level``, ``logger``, ``message``, ``exc``), for
  log shippers.

Standard library only: the server imports it too.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Literal

LogFormat = Literal["auto", "text", "journal", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# sd-daemon(3) priorities: <2> crit, <3> err, <4> warning, <5> notice, <6> info, <7> debug
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def is_journal_stream(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the one systemd connected to the journal (sd_journal_stream_fd, JOURNAL_STREAM)."""
    environ = os.environ if environ is None else environ
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def resolve_format(fmt: LogFormat, stream: IO[str], environ: Mapping[str, str] | None = None) -> str:
    if fmt != "auto":
        return fmt
    return "journal" if is_journal_stream(stream, environ) else "text"


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "journal":
        return JournalFormatter()
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: LogFormat = "auto", stream: IO[str] | None = None,
                      environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Make one handler on ``stream`` (stderr) the root logger's only one; returns it."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(resolve_format(fmt, stream, environ)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


__all__ = ["JournalFormatter", "JsonFormatter", "LogFormat", "configure_logging", "is_journal_stream", "priority",
           "resolve_format"]

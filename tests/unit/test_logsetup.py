"""agent/logsetup.py: the three line formats and how ``auto`` picks one."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from edgefleet.agent.logsetup import JournalFormatter, JsonFormatter, is_journal_stream, priority, resolve_format


def record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("edgefleet.server.jobs", level, __file__, 1, message, None, exc_info)


def test_priorities_follow_sd_daemon() -> None:
    assert [priority(level) for level in (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                          logging.CRITICAL)] == [7, 7, 6, 4, 3, 2]


def test_journal_lines_carry_the_prefix_on_every_line() -> None:
    text = JournalFormatter().format(record(logging.ERROR, "job failed", exc=True))
    lines = text.split("\n")
    assert lines[0] == "<3>edgefleet.server.jobs: job failed"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)  # the traceback stays at priority 3
    assert lines[-1] == "<3>ValueError: boom"


def test_json_lines() -> None:
    doc = json.loads(JsonFormatter().format(record(logging.WARNING, "slow \"disk\"", exc=True)))
    assert (doc["level"], doc["logger"], doc["message"]) == ("warning", "edgefleet.server.jobs", 'slow "disk"')
    assert doc["exc"].endswith("ValueError: boom") and doc["ts"].endswith("Z")


def test_auto_is_journal_only_for_the_stream_systemd_named(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        info = path.stat()
        named = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert is_journal_stream(stream, named)
        assert resolve_format("auto", stream, named) == "journal"
        assert resolve_format("auto", stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"}) == "text"
        assert resolve_format("auto", stream, {}) == "text"
        assert resolve_format("auto", stream, {"JOURNAL_STREAM": "garbage"}) == "text"
        assert resolve_format("json", stream, named) == "json"
    assert not is_journal_stream(io.StringIO(), named)  # no file descriptor

"""Where inference results go: MQTT ``results`` (rate-limited) and/or a rotated JSON-lines file."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from edgefleet.agent.config import ResultsSection

log = logging.getLogger(__name__)


class ResultPublisher(Protocol):
    def publish_result(self, payload: dict[str, Any]) -> None: ...


class RotatingJsonl:
    """Append one JSON document per line; past ``max_bytes`` the file becomes ``.1`` (``.1`` → ``.2``, ...)."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")
        self._size = self._handle.tell()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        data = line.encode()
        with self._lock:
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._handle.write(line)
            self._handle.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        self._handle.close()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._handle = self.path.open("a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._handle.close()


class ResultsSink:
    """Results to a rotated file and/or MQTT. The telemetry service rate-limits (results.max_per_s) and
    honours the ``set_results`` command, so MQTT results are handed over whenever it says they are on."""

    def __init__(self, section: ResultsSection, publisher: ResultPublisher | None) -> None:
        self.section = section
        self.publisher = publisher
        self.file = (RotatingJsonl(section.file, int(section.file_max_mb * 1024 * 1024), section.file_keep)
                     if section.file is not None else None)
        self.errors = 0

    def _mqtt_on(self) -> bool:
        return self.publisher is not None and bool(getattr(self.publisher, "results_enabled", self.section.mqtt))

    @property
    def active(self) -> bool:
        return self.file is not None or self._mqtt_on()

    def emit(self, record: dict[str, Any]) -> None:
        try:
            if self.file is not None:
                self.file.write(record)
            if self.publisher is not None and self._mqtt_on():
                self.publisher.publish_result(record)
        except Exception as exc:  # a full disk or a broken broker must not stop inference
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("cannot record a result (%d so far): %s", self.errors, exc)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

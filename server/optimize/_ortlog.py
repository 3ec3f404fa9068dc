"""ONNX Runtime's quantizer logs under the server's logger ``edgefleet.server.optimize.onnxruntime``.

Much of ``onnxruntime.quantization`` logs through the root logger (``logging.warning(...)``), the
rest through ``onnxruntime.*`` module loggers. Both end up under one named logger of ours, so the
server's log says who spoke and an operator can set its level like any other.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

LOGGER = logging.getLogger("edgefleet.server.optimize.onnxruntime")
_installed = threading.Lock()
_done = False


def _forward(record: logging.LogRecord) -> None:
    record.name = LOGGER.name
    if LOGGER.isEnabledFor(record.levelno):
        LOGGER.handle(record)


class _FromPackage(logging.Filter):
    """On the root logger: takes the records ONNX Runtime's files log straight to root."""

    def __init__(self, directories: tuple[str, ...]) -> None:
        super().__init__()
        self.directories = directories

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.directories):
            return True
        _forward(record)
        return False


class _Forward(logging.Handler):
    """On the ``onnxruntime`` logger (which then stops propagating): its module loggers' records."""

    def emit(self, record: logging.LogRecord) -> None:
        _forward(record)


def route_onnxruntime_logs() -> None:
    """Install the routing once per process (idempotent, thread-safe)."""
    global _done
    with _installed:
        if _done:
            return
        try:
            import onnxruntime
        except ImportError:
            return
        here = Path(onnxruntime.__file__).parent
        logging.getLogger().addFilter(_FromPackage((f"{here}/", f"{here.resolve()}/")))
        package = logging.getLogger("onnxruntime")
        package.addHandler(_Forward())
        package.propagate = False
        _done = True

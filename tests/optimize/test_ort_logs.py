"""ONNX Runtime's quantizer speaks under the server's logger, never as the root logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.server.optimize._ortlog import LOGGER, route_onnxruntime_logs
from tests.support.models import make_onnx_image_classifier


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class Rows:
    """A CalibrationDataReader over four random rows."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.rows = iter([{"image": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.rows, None)


def test_quantizer_warnings_arrive_under_the_server_logger(tmp_path: Path, captured: Capture) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    route_onnxruntime_logs()
    route_onnxruntime_logs()  # idempotent: one routing, not two copies of every line
    source = make_onnx_image_classifier(tmp_path / "m.onnx")
    reader = type("Reader", (CalibrationDataReader,), {"__init__": Rows.__init__, "get_next": Rows.get_next})()
    # not pre-processed: the quantizer warns through logging.warning(), i.e. the root logger
    quantize_static(str(source), str(tmp_path / "q.onnx"), reader, quant_format=QuantFormat.QDQ)
    from_ort = [r for r in captured.records if "onnxruntime" in r.pathname]
    assert any("pre-processing" in r.getMessage() for r in from_ort), [r.getMessage() for r in captured.records]
    assert {r.name for r in from_ort} == {LOGGER.name}
    messages = [r.getMessage() for r in from_ort]
    assert len(messages) == len(set(messages))  # each once
    assert all(r.levelno == logging.WARNING for r in from_ort if "pre-processing" in r.getMessage())


def test_module_loggers_are_forwarded_and_respect_the_level(captured: Capture) -> None:
    route_onnxruntime_logs()
    logging.getLogger("onnxruntime.quantization.preprocess").warning("from a module logger")
    LOGGER.setLevel(logging.ERROR)
    try:
        logging.getLogger("onnxruntime.quantization.preprocess").warning("below the level")
    finally:
        LOGGER.setLevel(logging.NOTSET)
    assert [(r.name, r.getMessage()) for r in captured.records] == [(LOGGER.name, "from a module logger")]

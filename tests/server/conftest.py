from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import make_onnx_image_classifier
from tests.support.server import RunningServer, start_server

DEVICE_CLASSES = {"rpi4": ["cpu-int8-static", "cpu-int8-dynamic"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("srv"), overrides={
        "device_classes": DEVICE_CLASSES, "max_upload_mb": 1.0})
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("models")
    return (make_onnx_image_classifier(base / "a.onnx", seed=0),
            make_onnx_image_classifier(base / "b.onnx", seed=1))

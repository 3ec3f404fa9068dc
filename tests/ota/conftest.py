from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ota.helpers import make_classifier
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("srv"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {"v1": make_classifier(base / "v1.onnx", seed=0), "v2": make_classifier(base / "v2.onnx", seed=1),
            "v3": make_classifier(base / "v3.onnx", seed=2)}

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto


def have_torch() -> bool:
    """torch imports here (PyPI's aarch64 torch is a CUDA build that a Pi cannot install)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


# marker -> (is it here?, the extra that brings it); a marked test skips cleanly where it is not
REQUIRES: dict[str, tuple[Callable[[], bool], str]] = {
    "torch": (have_torch, "edgefleet[torch]"),
    "onnx": (lambda: have("onnx", "onnxruntime"), "edgefleet[onnx] and onnx; neither has a 32-bit Arm wheel"),
    "litert": (lambda: have("ai_edge_litert"), "edgefleet[litert]; no 32-bit Arm wheel"),
}


def first_tflite_runtime() -> str:
    """The TFLite runtime ``auto`` takes here: LiteRT, else tflite-runtime (32-bit Arm)."""
    from edgefleet.agent.runtime.inventory import TFLITE_RUNTIMES, runtime_status

    return next(name for name in TFLITE_RUNTIMES if runtime_status(name)[0])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (present, extra) in REQUIRES.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if marked and not present():
            skip = pytest.mark.skip(reason=f"needs {marker}, which is not installed here ({extra})")
            for item in marked:
                item.add_marker(skip)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto for a test module; persistent, so ``restart()`` keeps retained messages and sessions."""
    running = Mosquitto(tmp_path_factory.mktemp("broker"), persistence=True).start()
    try:
        yield running
    finally:
        running.stop()

from __future__ import annotations

from collections.abc import Iterator
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("torch") for item in items) and not have_torch():
        skip = pytest.mark.skip(reason="needs PyTorch, which is not installed here (edgefleet[torch])")
        for item in items:
            if item.get_closest_marker("torch"):
                item.add_marker(skip)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import Mosquitto
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("srv"), mqtt_port=broker.port)
    try:
        yield running
    finally:
        running.stop()

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dashboard.fleet import Fleet, seed
from tests.support.broker import Mosquitto
from tests.support.server import start_server


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    broker = Mosquitto(workdir).start()
    server = start_server(workdir, mqtt_port=broker.port, overrides={
        "telemetry": {"batch_interval_s": 0.05}, "metrics_token": "scrape-me"})
    try:
        seeded = seed(server, broker.port, workdir)
        try:
            yield seeded
        finally:
            seeded.client.loop_stop()
            seeded.client.disconnect()
    finally:
        server.stop()
        broker.stop()

"""Mutual TLS: the agent verifies the broker against its CA and presents a client certificate."""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.telemetry import Telemetry
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.pki import issue
from tests.telemetry.support import agent_config


def test_mutual_tls(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue("ca", None, pki)
    issue("broker", ca, pki, san="localhost")
    issue("cam-01", ca, pki)
    broker = Mosquitto(tmp_path, extra_conf=f"cafile {pki}/ca.crt\ncertfile {pki}/broker.crt\n"
                                            f"keyfile {pki}/broker.key\nrequire_certificate true\n").start()
    tls = {"host": "localhost", "tls": True, "ca_certs": str(pki / "ca.crt")}
    good = Telemetry(agent_config(tmp_path / "a", broker.port, mqtt={
        **tls, "certfile": str(pki / "cam-01.crt"), "keyfile": str(pki / "cam-01.key")}), hw={}, agent_version="t")
    no_cert = Telemetry(agent_config(tmp_path / "b", broker.port, device_id="cam-02", mqtt=tls),
                        hw={}, agent_version="t")
    try:
        good.start()
        no_cert.start()
        wait_until(lambda: good.connected)
        good.event("runtime.fallback")
        wait_until(lambda: good.stats["sent"] == 1)
        wait_until(lambda: no_cert._link.last_error is not None)
        assert not no_cert.connected
    finally:
        good.stop(timeout=1.0)
        no_cert.stop(timeout=1.0)
        broker.stop()

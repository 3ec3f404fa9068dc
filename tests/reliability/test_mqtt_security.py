"""The broker's side of security, beyond tests/telemetry: the ACL from configs/mosquitto/acl against every
leaf and wildcard a device could try on a real Mosquitto, and TLS with generated certificates (a wrong CA,
a client certificate from another CA, an expired broker certificate: all refused)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.telemetry import Telemetry
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.pki import issue
from tests.telemetry.support import ROOT, agent_config
from tests.telemetry.test_will_acl import ACL, PASSWORDS, V5Client

NOT_AUTHORIZED = 135  # MQTT 5 PUBACK reason code


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path, acl=ACL, passwords=PASSWORDS).start()
    yield broker
    broker.stop()


def test_a_device_cannot_act_as_another_or_read_what_is_not_its_own(acl_broker: Mosquitto) -> None:
    port = acl_broker.port
    server = V5Client(port, "edgefleet-server", "srv")
    cam1 = V5Client(port, "cam-01", "pw1")
    cam2 = V5Client(port, "cam-02", "pw2")
    tried = 0
    try:
        assert server.subscribe(f"{ROOT}/#") == [1]
        for pattern in ("#", f"{ROOT}/#", f"{ROOT}/+/commands", f"{ROOT}/cam-02/#", "$share/g/" + f"{ROOT}/+/#",
                        "$SYS/#", f"{ROOT}/+/status"):
            cam1.client.subscribe(pattern, qos=1)  # granted or not, the ACL filters every message per reader
        time.sleep(0.5)
        for leaf in ("status", "telemetry", "events", "results", "commands"):
            assert cam1.publish(f"{ROOT}/cam-02/{leaf}", {"forged": leaf}) == NOT_AUTHORIZED, leaf
            tried += 1
        for topic in (f"{ROOT}/cam-01/commands", f"{ROOT}/cam-01/other", "edgefleet/v1/server", "x/y"):
            assert cam1.publish(topic, {"forged": topic}) == NOT_AUTHORIZED, topic
            tried += 1
        for leaf in ("status", "telemetry", "events", "results"):
            assert cam2.publish(f"{ROOT}/cam-02/{leaf}", {"real": leaf}) == 0
        assert server.publish(f"{ROOT}/cam-02/commands", {"id": "for-2", "type": "check_update"}) == 0
        assert server.publish(f"{ROOT}/cam-01/commands", {"id": "for-1", "type": "check_update"}) == 0
        wait_until(lambda: len([t for t, _ in server.got if "/cam-02/" in t]) >= 5)  # 4 real + its command
        wait_until(lambda: cam1.got)
        time.sleep(0.5)  # anything else that was going to arrive has arrived
        # cam-01 saw only its own commands, through whichever of its subscriptions matched
        assert {t for t, _ in cam1.got} == {f"{ROOT}/cam-01/commands"}
        assert all(doc == {"id": "for-1", "type": "check_update"} for _, doc in cam1.got)
        # the server saw cam-02's real messages and none of the forged ones
        assert all("forged" not in doc for _, doc in server.got)
        assert sorted(doc["real"] for t, doc in server.got if "real" in doc) == \
            ["events", "results", "status", "telemetry"]
    finally:
        for client in (server, cam1, cam2):
            client.close()
    print(f"ACL: {tried} forged publishes refused, 7 wildcard subscriptions read nothing foreign")


def test_anonymous_and_wrong_password_clients_are_refused(acl_broker: Mosquitto, tmp_path: Path) -> None:
    anonymous = Telemetry(agent_config(tmp_path / "a", acl_broker.port, device_id="cam-01"), hw={},
                          agent_version="t")
    wrong = Telemetry(agent_config(tmp_path / "w", acl_broker.port, device_id="cam-02",
                                   mqtt={"username": "cam-02", "password": "pw1"}), hw={}, agent_version="t")
    try:
        anonymous.start()
        wrong.start()
        wait_until(lambda: anonymous._link.last_error and wrong._link.last_error)
        assert not anonymous.connected and not wrong.connected
        assert "not authorized" in (wrong._link.last_error or "").lower()
    finally:
        anonymous.stop(timeout=1.0)
        wrong.stop(timeout=1.0)


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    out.mkdir()
    ca = issue("ca", None, out)
    rogue = issue("rogue-ca", None, out)
    issue("broker", ca, out, san="localhost")
    issue("expired-broker", ca, out, san="localhost", days=-1)
    issue("cam-01", ca, out)
    issue("cam-rogue", rogue, out)
    return out


def tls_broker(tmp_path: Path, pki: Path, cert: str) -> Mosquitto:
    return Mosquitto(tmp_path / cert, extra_conf=f"cafile {pki}/ca.crt\ncertfile {pki}/{cert}.crt\n"
                                                 f"keyfile {pki}/{cert}.key\nrequire_certificate true\n")


def client(tmp_path: Path, port: int, pki: Path, ca: str, cert: str, name: str) -> Telemetry:
    return Telemetry(agent_config(tmp_path / name, port, device_id=name, mqtt={
        "host": "localhost", "tls": True, "ca_certs": str(pki / f"{ca}.crt"), "certfile": str(pki / f"{cert}.crt"),
        "keyfile": str(pki / f"{cert}.key"), "connect_timeout_s": 2.0}), hw={}, agent_version="t")


def test_tls_refuses_wrong_ca_foreign_client_cert_and_expired_broker(tmp_path: Path, pki: Path) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / "expired-broker").mkdir()
    good_broker = tls_broker(tmp_path, pki, "broker").start()
    old_broker = tls_broker(tmp_path, pki, "expired-broker").start()
    good = client(tmp_path, good_broker.port, pki, "ca", "cam-01", "good")
    wrong_ca = client(tmp_path, good_broker.port, pki, "rogue-ca", "cam-01", "wrong-ca")
    foreign = client(tmp_path, good_broker.port, pki, "ca", "cam-rogue", "foreign")
    expired = client(tmp_path, old_broker.port, pki, "ca", "cam-01", "expired")
    refused = (wrong_ca, foreign, expired)
    try:
        for tel in (good, *refused):
            tel.start()
        wait_until(lambda: good.connected, timeout=10)
        good.event("runtime.fallback")
        wait_until(lambda: good.stats["sent"] == 1)
        wait_until(lambda: all(t._link.last_error for t in refused), timeout=15)
        time.sleep(0.5)
        assert not any(t.connected for t in refused)
        assert "certificate verify failed" in (wrong_ca._link.last_error or "").lower()
        assert "certificate" in (expired._link.last_error or "").lower()
        assert all(t.stats["sent"] == 0 for t in refused)
    finally:
        for tel in (good, *refused):
            tel.stop(timeout=1.0)
        good_broker.stop()
        old_broker.stop()

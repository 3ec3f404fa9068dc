"""Mutual TLS: the agent verifies the broker against its CA and presents a client certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.telemetry import Telemetry
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.telemetry.support import agent_config


def _issue(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, out: Path,
           san: str | None = None) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return subject, key


def test_mutual_tls(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _issue("ca", None, pki)
    _issue("broker", ca, pki, san="localhost")
    _issue("cam-01", ca, pki)
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

"""Certificates for TLS tests, made with ``cryptography``: a CA, servers and clients it signs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def issue(name: str, issuer: Issuer | None, out: Path, *, san: str | None = None, days: float = 1.0) -> Issuer:
    """Write ``out/{name}.crt`` and ``.key``; ``issuer=None`` makes a self-signed CA. A negative ``days``
    makes a certificate that has already expired."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    end = now + dt.timedelta(days=days)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(min(now, end) - dt.timedelta(days=2)).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return subject, key

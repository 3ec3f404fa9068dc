"""Ed25519 signatures over canonical JSON, shared by the server (signs) and the agent (verifies).

Two forms (docs/ota.md, "Formats"):

- RFC 8785 (JCS): ``canonical_json`` / ``sign_canonical`` / ``verify_canonical``. What this agent
  verifies: any JCS implementation and any Ed25519 library reproduce the bytes; NaN, Infinity and
  integers beyond 2**53 are refused.
- legacy: ``legacy_json`` (Python's ``json.dumps(sort_keys=True)``) with ``sign_document`` /
  ``verify_document``: only what the server signs for agents that predate the RFC 8785 form.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rfc8785

from edgefleet.agent.errors import ConfigError, SignatureError

if TYPE_CHECKING:  # cryptography (~8 MB) is imported by the first key or signature, not by strict_json's users
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_json(document: Any) -> bytes:
    """The RFC 8785 bytes of ``document``; SignatureError for what JCS cannot encode (NaN, Infinity, big ints)."""
    try:
        return rfc8785.dumps(document)
    except rfc8785.FloatDomainError as exc:
        raise SignatureError(f"not canonical JSON (RFC 8785): {exc.args[0] if exc.args else 'NaN or Infinity'} "
                             "is not a JSON number") from exc
    except rfc8785.IntegerDomainError as exc:
        raise SignatureError("not canonical JSON (RFC 8785): an integer beyond 2**53") from exc
    except rfc8785.CanonicalizationError as exc:
        raise SignatureError(f"not canonical JSON (RFC 8785): {exc}") from exc


def canonical_object(document: dict[str, Any], encoded: dict[str, bytes]) -> bytes:
    """``canonical_json(document)`` where the members named in ``encoded`` are already in RFC 8785 form
    (a large sub-document many documents share is encoded once). Keys are sorted as JCS sorts them."""
    members = [(key, encoded[key] if key in encoded else canonical_json(value)) for key, value in document.items()]
    members.sort(key=lambda item: item[0].encode("utf-16-be"))
    return b"{" + b",".join(canonical_json(key) + b":" + value for key, value in members) + b"}"


def legacy_json(document: Any) -> bytes:
    """The legacy signed bytes: sorted keys, no whitespace, UTF-8, Python's float and escape rules."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def strict_json(data: bytes) -> Any:
    """Parse JSON refusing what two parsers may read differently: NaN / Infinity and duplicate keys."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(data, object_pairs_hook=pairs, parse_constant=constant)


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read Ed25519 signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def parse_public_key(data: bytes, source: str = "public key") -> Ed25519PublicKey:
    """Accept a PEM SubjectPublicKeyInfo or the raw 32 bytes in base64."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        if b"BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot parse Ed25519 {source}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source} is not an Ed25519 public key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read Ed25519 public key {path}: {exc}") from exc
    return parse_public_key(data, str(path))


def raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The key's name in roots and signatures: sha256 of its 32 raw bytes, hex."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode()


def sign_canonical(key: Ed25519PrivateKey, document: dict[str, Any],
                   encoded: dict[str, bytes] | None = None) -> dict[str, str]:
    """``{"keyid", "sig"}``: base64 Ed25519 over the RFC 8785 form of ``document`` (``encoded``: members
    already in that form, see ``canonical_object``)."""
    data = canonical_object(document, encoded) if encoded else canonical_json(document)
    return {"keyid": key_id(key.public_key()), "sig": base64.b64encode(key.sign(data)).decode()}


def valid_signers(keys: dict[str, Ed25519PublicKey], document: dict[str, Any],
                  signatures: Iterable[tuple[str, str]]) -> set[str]:
    """The ids among ``keys`` whose (keyid, base64 sig) pair signs ``document``; each key counts once."""
    from cryptography.exceptions import InvalidSignature

    data = canonical_json(document)
    valid: set[str] = set()
    for keyid, sig in signatures:
        key = keys.get(keyid)
        if key is None or keyid in valid:
            continue
        try:
            key.verify(base64.b64decode(sig, validate=True), data)
        except (InvalidSignature, ValueError, TypeError):
            continue
        valid.add(keyid)
    return valid


def sign_document(key: Ed25519PrivateKey, document: dict[str, Any]) -> str:
    """The legacy form: base64 Ed25519 over ``legacy_json`` (agents before the RFC 8785 form)."""
    return base64.b64encode(key.sign(legacy_json(document))).decode()


def verify_document(key: Ed25519PublicKey, document: dict[str, Any], signature_b64: str) -> None:
    """The legacy form: raise SignatureError unless ``signature_b64`` signs ``legacy_json(document)``."""
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise SignatureError("manifest signature is not valid base64") from exc
    try:
        key.verify(signature, legacy_json(document))
    except InvalidSignature as exc:
        raise SignatureError("manifest signature does not verify with the pinned server key") from exc

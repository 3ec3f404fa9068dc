from __future__ import annotations

import pytest

from agent.errors import SignatureError
from agent.signing import (
    canonical_json,
    generate_private_key,
    parse_public_key,
    public_key_pem,
    sign_document,
    verify_document,
)


def test_canonical_json_is_key_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == canonical_json(
        {"a": [1, {"c": "é", "d": 2}], "b": 1}
    )
    assert canonical_json({"a": 1, "b": 2}) == b'{"a":1,"b":2}'


def test_sign_and_verify_roundtrip_and_tamper() -> None:
    key = generate_private_key()
    public = parse_public_key(public_key_pem(key.public_key()))
    doc = {"model": {"name": "m", "version": 3}, "expires_at": 10.0}
    signature = sign_document(key, doc)
    verify_document(public, doc, signature)
    with pytest.raises(SignatureError):
        verify_document(public, {**doc, "expires_at": 11.0}, signature)
    other = generate_private_key().public_key()
    with pytest.raises(SignatureError):
        verify_document(other, doc, signature)
    with pytest.raises(SignatureError, match="base64"):
        verify_document(public, doc, "!!not base64!!")

from __future__ import annotations

import pytest

from edgefleet.agent.errors import SignatureError
from edgefleet.agent.signing import (
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


def test_rfc8785_form_and_a_member_encoded_once() -> None:
    import math

    from edgefleet.agent.signing import canonical_object, legacy_json, sign_canonical, strict_json, valid_signers

    doc = {"b": [1.0, 1e21, 1e-7, "é\u2028"], "a": {"z": None, "y": True}, "drift_profile": {"x": [0.1, 2.5]}}
    assert canonical_json(doc) == ('{"a":{"y":true,"z":null},"b":[1,1e+21,1e-7,"é\u2028"],'
                                   '"drift_profile":{"x":[0.1,2.5]}}').encode()
    assert legacy_json(doc) != canonical_json(doc)  # Python's float spelling: 1.0, 1e-07
    assert canonical_object(doc, {"drift_profile": canonical_json(doc["drift_profile"])}) == canonical_json(doc)
    key = generate_private_key()
    spliced = sign_canonical(key, doc, {"drift_profile": canonical_json(doc["drift_profile"])})
    assert valid_signers({spliced["keyid"]: key.public_key()}, doc, [(spliced["keyid"], spliced["sig"])]) == \
        {spliced["keyid"]}
    for bad in (math.nan, math.inf, 2**60):
        with pytest.raises(SignatureError, match=r"not canonical JSON \(RFC 8785\)"):
            canonical_json({"x": bad})
    for text in (b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1, "a": 2}'):
        with pytest.raises(ValueError):
            strict_json(text)

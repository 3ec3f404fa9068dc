"""Manifest verification (signature, key, expiry, device, version, revert) and artifact checks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SignatureError, UpdateRejected
from agent.ota.verify import Running, check_artifact, verify_manifest
from agent.signing import generate_private_key, sign_document
from agent.wire import SignedManifest

KEY = generate_private_key()
OTHER = generate_private_key()
SHA = "a" * 64
NOW = 1_000_000.0


def manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"device_id": "cam-1", "model": {"name": "det", "version": 3, "sha256": SHA},
                           "artifact": {"sha256": SHA, "size": 10, "format": "onnx", "url": "http://x/a"},
                           "issued_at": NOW - 10, "expires_at": NOW + 3600}
    doc.update(changes)
    return doc


def signed(doc: dict[str, Any], key: Any = KEY) -> SignedManifest:
    return SignedManifest(manifest=doc, signature=sign_document(key, doc))


RUNNING_V2 = Running(version=2, sha256="b" * 64, issued_at=NOW - 100)


def check(sm: SignedManifest, running: Running = RUNNING_V2) -> Any:
    return verify_manifest(sm, KEY.public_key(), "cam-1", running, now=NOW)


def test_a_good_manifest_passes() -> None:
    assert check(signed(manifest())).model.version == 3
    assert check(signed(manifest()), Running()).model.version == 3  # nothing runs yet


def test_bad_signature_and_wrong_key() -> None:
    sm = signed(manifest())
    sm.manifest["model"]["version"] = 4  # tampered after signing
    with pytest.raises(SignatureError, match="does not verify with the pinned server key"):
        check(sm)
    with pytest.raises(SignatureError, match="does not verify"):
        check(signed(manifest(), OTHER))
    with pytest.raises(SignatureError, match="not valid base64"):
        check(SignedManifest(manifest=manifest(), signature="%%%"))


@pytest.mark.parametrize(("doc", "message"), [
    (manifest(expires_at=NOW - 1), "manifest expired at 999999"),
    (manifest(device_id="cam-2"), "manifest is for device 'cam-2', not 'cam-1'"),
    (manifest(model={"name": "det", "version": 2, "sha256": "c" * 64}), "version 2 is not higher than the running"),
    (manifest(model={"name": "det", "version": 1}), "version 1 is not higher than the running version 2"),
    (manifest(model={"name": "det", "version": 1}, revert=True, issued_at=NOW - 200),
     "revert manifest issued at 999800 is not newer than the one that installed version 2"),
    (manifest(artifact={"sha256": "zz", "size": 1, "format": "onnx", "url": "u"}), "manifest does not parse"),
])
def test_policy_rejections(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UpdateRejected, match=message):
        check(signed(doc))


def test_a_newer_revert_may_go_lower_and_the_running_target_is_up_to_date() -> None:
    assert check(signed(manifest(model={"name": "det", "version": 1}, revert=True))).model.version == 1
    same = manifest(model={"name": "det", "version": 2}, artifact={"sha256": "b" * 64, "size": 1, "format": "onnx",
                                                                    "url": "u"})
    assert check(signed(same)).model.version == 2


def test_check_artifact(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"0123456789")
    good = hashlib.sha256(b"0123456789").hexdigest()
    check_artifact(path, good, 10)
    with pytest.raises(UpdateRejected, match="artifact is 10 bytes, the manifest says 11"):
        check_artifact(path, good, 11)
    with pytest.raises(UpdateRejected, match=r"artifact sha256 .* does not match the manifest's aaaaaaaaaaaa"):
        check_artifact(path, SHA, 10)

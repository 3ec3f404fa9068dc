"""Manifest verification (signatures, key, expiry against trusted time, device, generation, version, revert)
and artifact checks."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.errors import SignatureError, UpdateRejected
from edgefleet.agent.ota.clock import FixedClock
from edgefleet.agent.ota.verify import Running, Seen, TrustedTime, check_artifact, verify_manifest
from edgefleet.agent.signing import generate_private_key, sign_canonical, sign_document
from edgefleet.agent.wire import SignedManifest

KEY = generate_private_key()
OTHER = generate_private_key()
SHA = "a" * 64
NOW = 1_000_000.0


def manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"device_id": "cam-1", "model": {"name": "det", "version": 3, "sha256": SHA},
                           "artifact": {"sha256": SHA, "size": 10, "format": "onnx", "url": "http://x/a"},
                           "issued_at": NOW - 10, "expires_at": NOW + 3600, "generation": 7}
    doc.update(changes)
    return doc


def signed(doc: dict[str, Any], key: Any = KEY) -> SignedManifest:
    return SignedManifest.model_validate({"manifest": doc, "signatures": [sign_canonical(key, doc)]})


RUNNING_V2 = Running(version=2, sha256="b" * 64, issued_at=NOW - 100)
SEEN = Seen(generation=6, trusted_time=NOW - 100)


def check(sm: SignedManifest, running: Running = RUNNING_V2, seen: Seen = SEEN) -> Any:
    return verify_manifest(sm, KEY.public_key(), "cam-1", running, now=NOW, seen=seen)


def test_a_good_manifest_passes() -> None:
    assert check(signed(manifest())).model.version == 3
    assert check(signed(manifest()), Running()).model.version == 3  # nothing runs yet


def test_bad_signature_wrong_key_and_the_legacy_form() -> None:
    sm = signed(manifest())
    sm.manifest["model"]["version"] = 4  # tampered after signing
    threshold = "manifest is not signed by a threshold of root version 0's manifest keys (0 valid, 1 needed)"
    with pytest.raises(SignatureError, match=threshold.replace("(", r"\(").replace(")", r"\)")):
        check(sm)
    with pytest.raises(SignatureError, match="0 valid, 1 needed"):
        check(signed(manifest(), OTHER))
    garbled = SignedManifest.model_validate({"manifest": manifest(), "signatures": [
        {"keyid": sign_canonical(KEY, manifest())["keyid"], "sig": "%%%"}]})
    with pytest.raises(SignatureError, match="0 valid"):
        check(garbled)
    # the legacy form (Python's json.dumps bytes) is what old agents read; this one refuses it
    legacy = SignedManifest(manifest=manifest(), signature=sign_document(KEY, manifest()))
    with pytest.raises(SignatureError, match="only the legacy signature"):
        check(legacy)
    with pytest.raises(SignatureError, match="no signature"):
        check(SignedManifest(manifest=manifest()))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_not_signable_json(value: float) -> None:
    doc = manifest(expires_at=value)
    with pytest.raises(SignatureError, match=r"not canonical JSON \(RFC 8785\)"):
        sign_canonical(KEY, doc)
    forged = SignedManifest.model_validate({"manifest": doc, "signatures": [
        {"keyid": sign_canonical(KEY, manifest())["keyid"], "sig": sign_canonical(KEY, manifest())["sig"]}]})
    with pytest.raises(SignatureError, match=r"not canonical JSON \(RFC 8785\)"):
        check(forged)


@pytest.mark.parametrize(("doc", "message"), [
    (manifest(expires_at=NOW - 1), "manifest expired at 999999"),
    (manifest(device_id="cam-2"), "manifest is for device 'cam-2', not 'cam-1'"),
    (manifest(model={"name": "det", "version": 2, "sha256": "c" * 64}), "version 2 is not higher than the running"),
    (manifest(model={"name": "det", "version": 1}), "version 1 is not higher than the running version 2"),
    (manifest(model={"name": "det", "version": 1}, revert=True, generation=5),
     r"manifest generation 5 is older than the last accepted \(6\): a replay"),
    (manifest(generation=5), r"manifest generation 5 is older than the last accepted \(6\): a replay"),
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
    # the generation last accepted is the same desired state: it passes the same checks again
    assert check(signed(manifest(generation=6))).generation == 6
    with pytest.raises(UpdateRejected, match="version 1 is not higher"):
        check(signed(manifest(model={"name": "det", "version": 1}, generation=6)))


def test_expiry_is_judged_against_the_newest_trusted_time_when_the_clock_cannot_be_trusted() -> None:
    doc = manifest(issued_at=NOW - 10, expires_at=NOW + 50)
    seen = Seen(generation=6, trusted_time=NOW + 100)  # an issued_at accepted after this manifest expired
    past = FixedClock(NOW - 86400 * 365, synced=False)  # a Pi after boot, before NTP
    with pytest.raises(UpdateRejected, match=r"manifest expired at 1000050 \(now 1000100; the clock is not "
                                             r"synchronized and behind the newest trusted time 1000100\)"):
        verify_manifest(signed(doc), KEY.public_key(), "cam-1", RUNNING_V2, seen=seen, clock=past)
    synced_but_behind = FixedClock(NOW, synced=True)
    with pytest.raises(UpdateRejected, match="the clock is behind the newest trusted time"):
        verify_manifest(signed(doc), KEY.public_key(), "cam-1", RUNNING_V2, seen=seen, clock=synced_but_behind)
    # nothing newer accepted yet: the clock is all there is
    assert verify_manifest(signed(doc), KEY.public_key(), "cam-1", RUNNING_V2, seen=SEEN, clock=past).generation == 7
    assert TrustedTime.judge(FixedClock(NOW + 5, synced=False), NOW) == TrustedTime(NOW + 5, "")


def test_check_artifact(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"0123456789")
    good = hashlib.sha256(b"0123456789").hexdigest()
    check_artifact(path, good, 10)
    with pytest.raises(UpdateRejected, match="artifact is 10 bytes, the manifest says 11"):
        check_artifact(path, good, 11)
    with pytest.raises(UpdateRejected, match=r"artifact sha256 .* does not match the manifest's aaaaaaaaaaaa"):
        check_artifact(path, SHA, 10)


def test_system_clock_reads_timesyncds_flag(tmp_path: Path) -> None:
    import time

    from edgefleet.agent.ota.clock import SystemClock

    flag = tmp_path / "synchronized"
    flag.touch()
    assert SystemClock(flag).synchronized() is True  # systemd-timesyncd says so
    assert abs(SystemClock(flag).now() - time.time()) < 1.0

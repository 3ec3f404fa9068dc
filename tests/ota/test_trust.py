"""The root of trust: TUF's rule for the next root (a threshold of the old root keys and of the new), k of n,
walking a chain from a bare key or a signed root, and ``rotate`` on the server's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.agent.errors import ConfigError, SignatureError
from edgefleet.agent.signing import generate_private_key, key_id, load_private_key, private_key_pem, public_key_pem
from edgefleet.agent.trust import TrustedRoot, walk
from edgefleet.server.trust import ServerTrust, make_root, rotate, sign_root, verify_chain


def test_next_root_needs_the_old_keys_and_its_own() -> None:
    k1, k2, evil = generate_private_key(), generate_private_key(), generate_private_key()
    v1 = sign_root(make_root(1, [k1.public_key()], 1, [k1.public_key()]), [k1])
    trusted = TrustedRoot.from_signed(v1)
    good = sign_root(make_root(2, [k2.public_key()], 1, [k2.public_key()]), [k1, k2])
    assert trusted.advance(good).version == 2
    only_new = sign_root(make_root(2, [k2.public_key()], 1, [k2.public_key()]), [k2])
    with pytest.raises(SignatureError, match=r"root version 2 is not signed by a threshold of root version 1's "
                                             r"root keys \(0 valid, 1 needed\)"):
        trusted.advance(only_new)
    only_old = sign_root(make_root(2, [k2.public_key()], 1, [k2.public_key()]), [k1])
    with pytest.raises(SignatureError, match=r"by a threshold of its own \(2\) root keys"):
        trusted.advance(only_old)
    attacker = sign_root(make_root(2, [evil.public_key()], 1, [evil.public_key()]), [evil])
    newest, problem = walk(trusted, [attacker])
    assert newest.version == 1 and problem is not None and "root version 1's root keys" in problem
    skipped = sign_root(make_root(3, [k2.public_key()], 1, [k2.public_key()]), [k1, k2])
    with pytest.raises(SignatureError, match="root version 3 does not follow version 1"):
        trusted.advance(skipped)


def test_two_of_three_root_keys() -> None:
    online, a, b = generate_private_key(), generate_private_key(), generate_private_key()
    roots = [online.public_key(), a.public_key(), b.public_key()]
    v1 = TrustedRoot.from_signed(sign_root(make_root(1, roots, 2, [online.public_key()]), [online, a]))
    new_online = generate_private_key()
    doc = make_root(2, [new_online.public_key(), a.public_key(), b.public_key()], 2, [new_online.public_key()])
    with pytest.raises(SignatureError, match=r"\(1 valid, 2 needed\)"):  # the online key alone (a leak) cannot
        v1.advance(sign_root(doc, [online, new_online]))
    assert v1.advance(sign_root(doc, [online, new_online, b])).version == 2
    duplicated = sign_root(doc, [online, new_online])
    duplicated.signatures.append(duplicated.signatures[0])  # the same key twice counts once
    with pytest.raises(SignatureError, match=r"\(1 valid, 2 needed\)"):
        v1.advance(duplicated)


def test_a_bare_key_finds_its_way_into_the_chain() -> None:
    k1, k2, k3 = generate_private_key(), generate_private_key(), generate_private_key()
    chain = [sign_root(make_root(1, [k1.public_key()], 1, [k1.public_key()]), [k1]),
             sign_root(make_root(2, [k2.public_key()], 1, [k2.public_key()]), [k1, k2]),
             sign_root(make_root(3, [k3.public_key()], 1, [k3.public_key()]), [k2, k3])]
    newest, problem = walk(TrustedRoot.from_key(k1.public_key()), chain)
    assert (newest.version, problem) == (3, None) and list(newest.role_keys("manifest")) == [key_id(k3.public_key())]
    # provisioned after the first rotation: pinned k2, the chain before it is passed over
    assert walk(TrustedRoot.from_key(k2.public_key()), chain)[0].version == 3


def test_rotate_on_the_server_files(tmp_path: Path) -> None:
    key_path = tmp_path / "signing.key"
    key_path.write_bytes(private_key_pem(generate_private_key()))
    trust = ServerTrust(key_path)
    first = load_private_key(key_path)
    assert trust.material().root_version == 1 and trust.material().key_id == key_id(first.public_key())
    second = rotate(trust)
    assert second.signed["version"] == 2 and load_private_key(key_path).public_key() != first.public_key()
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    assert verify_chain(trust.chain()).version == 2
    # a threshold of two: an offline key joins, then a rotation needs it
    offline = generate_private_key()
    (tmp_path / "offline.pub").write_bytes(public_key_pem(offline.public_key()))
    (tmp_path / "offline.key").write_bytes(private_key_pem(offline))
    with pytest.raises(ConfigError, match=r"its own \(3\) root keys \(1 valid, 2 needed\)"):
        rotate(trust, add_keys=[tmp_path / "offline.pub"], threshold=2)  # the new root's own threshold too
    rotate(trust, add_keys=[tmp_path / "offline.pub"], threshold=2, sign_with=[tmp_path / "offline.key"])
    with pytest.raises(ConfigError, match=r"\(1 valid, 2 needed\): bring the offline root keys with --sign-with"):
        rotate(trust)
    assert verify_chain(trust.chain()).version == 3  # a refused rotation writes nothing
    assert rotate(trust, sign_with=[tmp_path / "offline.key"]).signed["version"] == 4
    # revoke the offline key: the next root has the online key alone again
    fourth = rotate(trust, sign_with=[tmp_path / "offline.key"], revoke=[key_id(offline.public_key())[:12]],
                    threshold=1)
    assert fourth.signed["roles"]["root"]["threshold"] == 1 and len(fourth.signed["roles"]["root"]["keyids"]) == 1
    # the key that signs is checked against the newest root at start-up
    key_path.write_bytes(private_key_pem(first))
    with pytest.raises(ConfigError, match="is not a manifest key of root version 5"):
        ServerTrust(key_path).material()


def test_a_running_server_keeps_its_key_when_the_files_turn_bad(tmp_path: Path) -> None:
    import time

    key_path = tmp_path / "signing.key"
    key_path.write_bytes(private_key_pem(generate_private_key()))
    trust = ServerTrust(key_path)
    first = trust.material()
    (trust.roots_dir / "2.root.json").write_text("{torn")  # what a broken copy between replicas leaves
    time.sleep(1.1)
    assert trust.material() is first  # still signing, one error logged
    (trust.roots_dir / "2.root.json").unlink()
    rotate(trust)
    time.sleep(1.1)
    assert trust.material().root_version == 2 and trust.material().key_id != first.key_id


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_rotate_as_root_keeps_the_owner_of_the_server_files(tmp_path: Path) -> None:
    key_path = tmp_path / "signing.key"
    key_path.write_bytes(private_key_pem(generate_private_key()))
    trust = ServerTrust(key_path)
    trust.ensure_initial()
    os.chown(key_path, 65534, 65534)  # the server's own user (nobody here)
    rotate(trust)
    assert (key_path.stat().st_uid, key_path.stat().st_gid) == (65534, 65534)
    assert (trust.roots_dir / "2.root.json").stat().st_uid == 65534

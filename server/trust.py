"""The server's side of the root of trust (docs/ota.md "Key ceremony").

Files (``trust_dir``, by default ``trust/`` beside the signing key)::

    trust/root/1.root.json, 2.root.json, ...   every root version ever made (public; served to devices)
    <signing_key>                               the online key: signs manifests, listed in the newest root

``rotate`` makes a new online key and root version N+1 listing it (plus the offline root keys kept or added),
signed by a threshold of root N's root keys and of its own (TUF's rule, agent/trust.py); the old online key is
overwritten. A running server picks the new key and root up within a second (``refresh``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.agent.errors import ConfigError, SignatureError
from edgefleet.agent.ota.fsutil import atomic_write
from edgefleet.agent.signing import (
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_b64,
    sign_canonical,
    strict_json,
)
from edgefleet.agent.trust import TrustedRoot
from edgefleet.agent.wire import SignedRoot

log = logging.getLogger("edgefleet.server.trust")
PENDING = ".next"  # suffix of a new online key written before its root; renamed over the old key after


def trust_dir_of(signing_key: Path, trust_dir: Path | None) -> Path:
    return trust_dir if trust_dir is not None else signing_key.parent / "trust"


def make_root(version: int, root_keys: list[Ed25519PublicKey], threshold: int,
              manifest_keys: list[Ed25519PublicKey], *, now: float | None = None) -> dict[str, Any]:
    keys = {key_id(k): {"keytype": "ed25519", "public": public_b64(k)} for k in [*root_keys, *manifest_keys]}
    return {"type": "root", "version": version, "keys": keys,
            "roles": {"root": {"keyids": sorted({key_id(k) for k in root_keys}), "threshold": threshold},
                      "manifest": {"keyids": sorted({key_id(k) for k in manifest_keys}), "threshold": 1}},
            "created_at": round(now if now is not None else time.time(), 3)}


def sign_root(document: dict[str, Any], keys: list[Ed25519PrivateKey]) -> SignedRoot:
    unique = {key_id(k.public_key()): k for k in keys}
    return SignedRoot.model_validate({"signed": document,
                                      "signatures": [sign_canonical(k, document) for k in unique.values()]})


@dataclass(frozen=True)
class Material:
    key: Ed25519PrivateKey
    key_id: str
    chain: tuple[SignedRoot, ...]

    @property
    def root_version(self) -> int:
        return int(self.chain[-1].signed["version"])


class ServerTrust:
    def __init__(self, signing_key: Path, trust_dir: Path | None = None) -> None:
        self.signing_key = signing_key
        self.dir = trust_dir_of(signing_key, trust_dir)
        self.roots_dir = self.dir / "root"
        self._lock = threading.Lock()
        self._material: Material | None = None
        self._stamp: tuple[int, ...] | None = None
        self._checked = 0.0

    # --- files ---------------------------------------------------------------------------------

    def chain(self) -> list[SignedRoot]:
        """Every root version on disk, ascending."""
        if not self.roots_dir.is_dir():
            return []
        found: list[tuple[int, SignedRoot]] = []
        for path in self.roots_dir.glob("*.root.json"):
            try:
                root = SignedRoot.model_validate(strict_json(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: not a signed root: {str(exc).splitlines()[0]}") from exc
            found.append((int(root.signed.get("version", 0)), root))
        return [root for _, root in sorted(found, key=lambda item: item[0])]

    def write_root(self, root: SignedRoot) -> Path:
        path = self.roots_dir / f"{root.signed['version']}.root.json"
        atomic_write(path, root.model_dump_json(indent=1).encode())
        return path

    def ensure_initial(self) -> SignedRoot:
        """Root version 1 from the signing key when none exists (a server from before roots): one key, threshold 1."""
        chain = self.chain()
        if chain:
            return chain[0]
        key = load_private_key(self.signing_key)
        root = sign_root(make_root(1, [key.public_key()], 1, [key.public_key()]), [key])
        self.write_root(root)
        log.info("root of trust version 1 written to %s", self.roots_dir)
        return root

    def finish_pending(self) -> None:
        """A rotation cut between writing root N+1 and renaming its key over the old one: finish it."""
        pending = self.signing_key.with_name(self.signing_key.name + PENDING)
        chain = self.chain()
        if not pending.exists() or not chain:
            return
        key = load_private_key(pending)
        if key_id(key.public_key()) in chain[-1].signed.get("roles", {}).get("manifest", {}).get("keyids", []):
            os.replace(pending, self.signing_key)
            log.warning("finished an interrupted key rotation: %s", self.signing_key)

    # --- what the server signs with ----------------------------------------------------------------

    def material(self) -> Material:
        """The online key and the chain, reloaded when the files changed (checked at most once a second)."""
        with self._lock:
            now = time.monotonic()
            if self._material is not None and now - self._checked < 1.0:
                return self._material
            self._checked = now
            stamp = self._files_stamp()
            if self._material is None or stamp != self._stamp:
                try:
                    self._material = self._load()
                except ConfigError as exc:
                    if self._material is None:
                        raise
                    log.error("trust material not reloaded, still signing with %s: %s", self._material.key_id[:12],
                              exc)
                self._stamp = stamp
            return self._material

    def _files_stamp(self) -> tuple[int, ...]:
        stamps = []
        for path in (self.signing_key, self.roots_dir):
            try:
                info = path.stat()
                stamps += [info.st_mtime_ns, info.st_ino, info.st_size]
            except OSError:
                stamps += [0, 0, 0]
        return tuple(stamps)

    def _load(self) -> Material:
        self.finish_pending()
        self.ensure_initial()
        chain = self.chain()
        trusted = verify_chain(chain)
        key = load_private_key(self.signing_key)
        kid = key_id(key.public_key())
        if kid not in trusted.root.roles["manifest"].keyids:
            raise ConfigError(f"signing key {self.signing_key} ({kid[:12]}) is not a manifest key of root version "
                              f"{trusted.version}: restore the key or run rotate-key")
        return Material(key, kid, tuple(chain))


def verify_chain(chain: list[SignedRoot]) -> TrustedRoot:
    """The newest root of a chain that holds together from its version 1, else ConfigError."""
    if not chain:
        raise ConfigError("no root of trust")
    try:
        trusted = TrustedRoot.from_signed(chain[0])
        for root in chain[1:]:
            trusted = trusted.advance(root)
    except SignatureError as exc:
        raise ConfigError(f"the root chain on disk does not verify: {exc}") from exc
    return trusted


def rotate(trust: ServerTrust, *, sign_with: Sequence[Path] = (), add_keys: Sequence[Path] = (),
           revoke: Sequence[str] = (), threshold: int | None = None) -> SignedRoot:
    """A new online key and root version N+1 (see the module docstring); returns the new root."""
    trust.finish_pending()
    trust.ensure_initial()
    chain = trust.chain()
    old = verify_chain(chain)
    old_key = load_private_key(trust.signing_key)
    old_online = key_id(old_key.public_key())
    new_key = generate_private_key()
    def revoked(kid: str) -> bool:
        return any(kid == r or (len(r) >= 8 and kid.startswith(r)) for r in revoke)

    offline = [old.keys[k] for k in old.root.roles["root"].keyids if k != old_online and not revoked(k)]
    offline += [load_public_key(p) for p in add_keys]
    root_keys = [new_key.public_key(), *offline]
    count = len({key_id(k) for k in root_keys})
    want = threshold if threshold is not None else min(old.root.roles["root"].threshold, count)
    if not 1 <= want <= count:
        raise ConfigError(f"--threshold {want}: the new root has {count} root key(s)")
    document = make_root(old.version + 1, root_keys, want, [new_key.public_key()])
    signers = [old_key, new_key, *(load_private_key(p) for p in sign_with)]
    signed = sign_root(document, signers)
    try:
        old.advance(signed)
    except SignatureError as exc:
        raise ConfigError(f"{exc}: bring the offline root keys with --sign-with FILE") from exc
    owner = trust.signing_key.stat()  # run as root for a server that runs as its own user: keep the owner
    pending = trust.signing_key.with_name(trust.signing_key.name + PENDING)
    atomic_write(pending, private_key_pem(new_key), mode=0o600)
    written = trust.write_root(signed)
    for path in (pending, written):
        _chown_like(path, owner)
    os.replace(pending, trust.signing_key)
    os.chmod(trust.signing_key, 0o600)
    return signed


def _chown_like(path: Path, like: os.stat_result) -> None:
    if os.geteuid() == 0 and (like.st_uid, like.st_gid) != (0, 0):
        os.chown(path, like.st_uid, like.st_gid)

"""The agent's root of trust on disk: ``state_dir/trust/root.json`` holds the newest root it verified.

It starts from what the device was provisioned with: ``server.root`` (a signed root, e.g. the server's
``trust/root/1.root.json``) or ``server.public_key`` (a bare key: root version 0). ``update(fetch)`` walks the
server's chain from there (agent/trust.py ``walk``) and saves the newest root it verified (fsync, rename)
with the fingerprint of the provisioned anchor: provisioning another anchor starts the walk over."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.config import ServerSection
from edgefleet.agent.errors import ConfigError, SignatureError
from edgefleet.agent.ota.fsutil import atomic_write
from edgefleet.agent.signing import canonical_json, load_public_key, strict_json
from edgefleet.agent.trust import TrustedRoot, walk
from edgefleet.agent.wire import SignedRoot

log = logging.getLogger("agent.ota.client")


def read_signed_root(path: Path) -> SignedRoot:
    try:
        return SignedRoot.model_validate(strict_json(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the root of trust {path}: {str(exc).splitlines()[0]}") from exc


class RootStore:
    def __init__(self, state_dir: Path, server: ServerSection) -> None:
        self.path = state_dir / "trust" / "root.json"
        self.server = server
        self._current: TrustedRoot | None = None
        self._anchor: str | None = None

    def provisioned(self) -> TrustedRoot:
        if self.server.root is not None:
            try:
                return TrustedRoot.from_signed(read_signed_root(self.server.root))
            except SignatureError as exc:
                raise ConfigError(f"server.root {self.server.root}: {exc}") from exc
        if self.server.public_key is not None:
            return TrustedRoot.from_key(load_public_key(self.server.public_key))
        raise ConfigError("neither server.root nor server.public_key is set: refusing unsigned updates")

    def current(self) -> TrustedRoot:
        if self._current is None:
            start = self.provisioned()
            self._anchor = _fingerprint(start)
            saved = self._saved(self._anchor)
            self._current = saved if saved is not None and saved.version >= start.version else start
        return self._current

    def _saved(self, anchor: str) -> TrustedRoot | None:
        if not self.path.exists():
            return None
        try:
            doc = strict_json(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("anchor") != anchor:
                return None  # walked from another provisioned anchor
            return TrustedRoot.from_signed(SignedRoot.model_validate(doc.get("root")))
        except (OSError, ValueError, SignatureError) as exc:
            log.warning("saved root of trust ignored: %s", str(exc).splitlines()[0])
            return None

    def update(self, fetch: Callable[[int], list[SignedRoot]]) -> str | None:
        """Walk the server's chain past the current root; save what verified. Returns why it stopped, if not at
        the end of the chain."""
        start = self.current()
        newest, problem = walk(start, fetch(start.version))
        if newest.version > start.version and newest.signed is not None:
            doc = {"anchor": self._anchor, "root": newest.signed.model_dump(mode="json")}
            atomic_write(self.path, json.dumps(doc).encode())
            self._current = newest
            log.info("root of trust: version %d -> %d", start.version, newest.version)
        if problem is not None:
            log.warning("root of trust stays at version %d: %s", newest.version, problem)
        return problem


def _fingerprint(root: TrustedRoot) -> str:
    if root.signed is None:
        return "key:" + ",".join(sorted(root.keys))
    return "root:" + hashlib.sha256(canonical_json(root.signed.signed)).hexdigest()

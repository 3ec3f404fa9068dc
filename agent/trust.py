"""The root of trust: versioned roots of Ed25519 keys with thresholds, and the rule that moves from one
version to the next (TUF's): root N+1 is trusted only when signed by a threshold of root N's root keys
*and* by a threshold of its own. Shared by the server (makes and signs roots) and the agent (walks them).

A bare public key (``server.public_key``) is root version 0: one key, threshold 1, for both roles.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from edgefleet.agent.errors import SignatureError
from edgefleet.agent.signing import key_id, public_b64, valid_signers
from edgefleet.agent.wire import Root, RootKey, RootRole, Signature, SignedRoot

RoleName = Literal["root", "manifest"]

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class TrustedRoot:
    root: Root
    keys: dict[str, Ed25519PublicKey]
    signed: SignedRoot | None  # None for a bare provisioned key (version 0)

    @property
    def version(self) -> int:
        return self.root.version

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> TrustedRoot:
        kid = key_id(key)
        root = Root.model_construct(type="root", version=0, keys={kid: RootKey(public=public_b64(key))},
                                    roles={"root": RootRole(keyids=[kid], threshold=1),
                                           "manifest": RootRole(keyids=[kid], threshold=1)}, created_at=None)
        return cls(root, {kid: key}, None)

    @classmethod
    def from_signed(cls, signed: SignedRoot, *, self_signed: bool = True) -> TrustedRoot:
        """Parse ``signed``; with ``self_signed``, also require a threshold of its own root keys."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            root = Root.model_validate(signed.signed)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "root"
            raise SignatureError(f"root does not parse: {where}: {first['msg']}") from exc
        keys: dict[str, Ed25519PublicKey] = {}
        for kid, ref in root.keys.items():
            try:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(ref.public, validate=True))
            except (ValueError, TypeError) as exc:
                raise SignatureError(f"root version {root.version}: key {kid[:12]} is not an Ed25519 key") from exc
            if key_id(key) != kid:
                raise SignatureError(f"root version {root.version}: key id {kid[:12]} does not name its key")
            keys[kid] = key
        for name, role in root.roles.items():
            missing = [k for k in role.keyids if k not in keys]
            if missing or role.threshold > len(set(role.keyids)):
                raise SignatureError(f"root version {root.version}: role {name} names unknown keys or a threshold "
                                     "above its key count")
        trusted = cls(root, keys, signed)
        if self_signed:
            trusted.require(signed.signed, signed.signatures, "root", what=f"root version {root.version}",
                            by=f"its own ({root.version})")
        return trusted

    def role_keys(self, role: RoleName) -> dict[str, Ed25519PublicKey]:
        spec = self.root.roles.get(role)
        return {k: self.keys[k] for k in spec.keyids} if spec is not None else {}

    def require(self, document: dict[str, Any], signatures: Iterable[Signature], role: RoleName, *, what: str,
                by: str | None = None) -> set[str]:
        """SignatureError unless a threshold of this root's ``role`` keys signed ``document``; the valid ids."""
        spec = self.root.roles.get(role)
        if spec is None:
            raise SignatureError(f"root version {self.version} has no {role} role")
        valid = valid_signers(self.role_keys(role), document, ((s.keyid, s.sig) for s in signatures))
        if len(valid) < spec.threshold:
            whose = by or f"root version {self.version}'s"
            raise SignatureError(f"{what} is not signed by a threshold of {whose} {role} keys "
                                 f"({len(valid)} valid, {spec.threshold} needed)")
        return valid

    def advance(self, candidate: SignedRoot) -> TrustedRoot:
        """The next root when ``candidate`` may follow this one (TUF's rule), else SignatureError."""
        nxt = TrustedRoot.from_signed(candidate, self_signed=False)
        if self.version > 0 and nxt.version != self.version + 1:
            raise SignatureError(f"root version {nxt.version} does not follow version {self.version}")
        if nxt.version <= self.version:
            raise SignatureError(f"root version {nxt.version} is not newer than version {self.version}")
        self.require(candidate.signed, candidate.signatures, "root", what=f"root version {nxt.version}")
        nxt.require(candidate.signed, candidate.signatures, "root", what=f"root version {nxt.version}",
                    by=f"its own ({nxt.version})")
        return nxt


def walk(trusted: TrustedRoot, chain: Iterable[SignedRoot]) -> tuple[TrustedRoot, str | None]:
    """Follow ``chain`` (ascending versions) from ``trusted`` as far as it verifies: (newest trusted, why it
    stopped or None). From a bare key (version 0) the first root it signs is the way in; roots before it
    (from before that key existed) are passed over."""
    problem: str | None = None
    for candidate in chain:
        version = candidate.signed.get("version") if isinstance(candidate.signed, dict) else None
        if isinstance(version, int) and version <= trusted.version:
            continue
        try:
            trusted = trusted.advance(candidate)
            problem = None
        except SignatureError as exc:
            problem = str(exc)
            if trusted.version > 0:
                break
    return trusted, problem

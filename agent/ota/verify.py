"""Checks made before anything is acted on: the manifest's signatures, freshness and policy, the artifact's bytes.

Order (docs/ota.md "Verification"): a threshold of the trusted root's manifest keys signed the RFC 8785
form; it parses and names this device; it has not expired (against ``TrustedTime`` when the clock is not
known to be right); its generation is not lower than the last accepted (equal: the same desired state);
its version is higher than the one running, unless it is a revert (a newer generation may go lower).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.agent.errors import SignatureError, UpdateRejected
from edgefleet.agent.ota.clock import Clock, SystemClock
from edgefleet.agent.ota.fsutil import sha256_file
from edgefleet.agent.trust import TrustedRoot
from edgefleet.agent.wire import Manifest, SignedManifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class Running:
    """What the device runs now, as far as the version check is concerned."""

    version: int | None = None  # None: nothing runs
    sha256: str | None = None
    issued_at: float | None = None  # of the manifest that installed it


@dataclass(frozen=True)
class Seen:
    """What the device accepted before (persisted with the update state)."""

    generation: int = 0  # the newest generation accepted
    trusted_time: float = 0.0  # the newest time known true: issued_at accepted, or a synchronized clock's reading


@dataclass(frozen=True)
class TrustedTime:
    now: float
    note: str  # "" when the clock is synchronized and not behind the newest trusted time

    @classmethod
    def judge(cls, clock: Clock, trusted_time: float) -> TrustedTime:
        now = clock.now()
        if not clock.synchronized():
            if now < trusted_time:
                return cls(trusted_time, f"the clock is not synchronized and behind the newest trusted time "
                                         f"{trusted_time:.0f}")
            return cls(now, "")
        if now < trusted_time:
            return cls(trusted_time, f"the clock is behind the newest trusted time {trusted_time:.0f}")
        return cls(now, "")


def verify_manifest(signed: SignedManifest, root: TrustedRoot | Ed25519PublicKey, device_id: str, running: Running,
                    now: float | None = None, *, seen: Seen | None = None, clock: Clock | None = None) -> Manifest:
    """The parsed manifest, or SignatureError / UpdateRejected with a one-line reason: ``authenticate`` then
    ``check_policy``."""
    manifest = authenticate(signed, root, device_id, now, seen=seen, clock=clock)
    check_policy(manifest, running)
    return manifest


def authenticate(signed: SignedManifest, root: TrustedRoot | Ed25519PublicKey, device_id: str,
                 now: float | None = None, *, seen: Seen | None = None, clock: Clock | None = None) -> Manifest:
    """Signatures, schema, device, expiry and generation: whether this is the server's word, fresh and newest.

    A manifest of the generation last accepted is the same desired state (a renewed issued_at, a delta added)."""
    trusted = root if isinstance(root, TrustedRoot) else TrustedRoot.from_key(root)
    if not signed.signatures:
        if signed.signature is not None:
            raise SignatureError("manifest carries only the legacy signature (Python json.dumps form); this agent "
                                 "verifies RFC 8785 signatures")
        raise SignatureError("manifest carries no signature")
    trusted.require(signed.manifest, signed.signatures, "manifest", what="manifest")
    try:
        manifest = Manifest.model_validate(signed.manifest)
    except ValidationError as exc:
        raise UpdateRejected(f"manifest does not parse: {exc.errors()[0]['msg']}") from exc
    if manifest.device_id != device_id:
        raise UpdateRejected(f"manifest is for device {manifest.device_id!r}, not {device_id!r}")
    seen = seen or Seen()
    when = TrustedTime(now, "") if now is not None else TrustedTime.judge(clock or SystemClock(), seen.trusted_time)
    if manifest.expires_at <= when.now:
        note = f"; {when.note}" if when.note else ""
        raise UpdateRejected(f"manifest expired at {manifest.expires_at:.0f} (now {when.now:.0f}{note})")
    if manifest.generation < seen.generation:
        raise UpdateRejected(f"manifest generation {manifest.generation} is older than the last accepted "
                             f"({seen.generation}): a replay")
    return manifest


def check_policy(manifest: Manifest, running: Running) -> None:
    """The version rule: higher than what runs, or a revert (whose newer generation ``authenticate`` checked).
    The same version and sha256 as running is "up to date" (the caller's), not a rejection."""
    if running.version is None:
        return
    version = manifest.model.version
    if version == running.version and manifest.artifact.sha256 == running.sha256:
        return
    if manifest.revert:
        return
    if version <= running.version:
        raise UpdateRejected(f"version {version} is not higher than the running version {running.version}")


def check_artifact(path: Path, sha256: str, size: int) -> None:
    """Raise UpdateRejected unless ``path`` holds exactly ``size`` bytes hashing to ``sha256``."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise UpdateRejected(f"artifact is {actual_size} bytes, the manifest says {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise UpdateRejected(f"artifact sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…")

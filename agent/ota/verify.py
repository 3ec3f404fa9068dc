"""Checks made before anything is acted on: the manifest's signature and policy, the artifact's bytes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from agent.errors import UpdateRejected
from agent.ota.fsutil import sha256_file
from agent.signing import verify_document
from agent.wire import Manifest, SignedManifest


@dataclass(frozen=True)
class Running:
    """What the device runs now, as far as the version check is concerned."""

    version: int | None = None  # None: nothing runs
    sha256: str | None = None
    issued_at: float | None = None  # of the manifest that installed it


def verify_manifest(signed: SignedManifest, key: Ed25519PublicKey, device_id: str, running: Running,
                    now: float | None = None) -> Manifest:
    """The parsed manifest, or SignatureError / UpdateRejected with a one-line reason.

    A manifest naming exactly what runs (same version and sha256) is returned as is: the
    caller treats it as "up to date", not as a rejection.
    """
    verify_document(key, signed.manifest, signed.signature)
    try:
        manifest = Manifest.model_validate(signed.manifest)
    except ValidationError as exc:
        raise UpdateRejected(f"manifest does not parse: {exc.errors()[0]['msg']}") from exc
    if manifest.device_id != device_id:
        raise UpdateRejected(f"manifest is for device {manifest.device_id!r}, not {device_id!r}")
    now = time.time() if now is None else now
    if manifest.expires_at <= now:
        raise UpdateRejected(f"manifest expired at {manifest.expires_at:.0f} (now {now:.0f})")
    if running.version is None:
        return manifest
    version = manifest.model.version
    if version == running.version and manifest.artifact.sha256 == running.sha256:
        return manifest
    if manifest.revert:
        if running.issued_at is not None and manifest.issued_at <= running.issued_at:
            raise UpdateRejected(
                f"revert manifest issued at {manifest.issued_at:.0f} is not newer than the one that "
                f"installed version {running.version} ({running.issued_at:.0f})")
        return manifest
    if version <= running.version:
        raise UpdateRejected(f"version {version} is not higher than the running version {running.version}")
    return manifest


def check_artifact(path: Path, sha256: str, size: int) -> None:
    """Raise UpdateRejected unless ``path`` holds exactly ``size`` bytes hashing to ``sha256``."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise UpdateRejected(f"artifact is {actual_size} bytes, the manifest says {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise UpdateRejected(f"artifact sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…")

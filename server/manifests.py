"""Desired-state manifests: variant selection, Ed25519 signature, ETag.

The signed body depends only on the device's stored desired state (with its ``issued_at``), its
class and runtimes, the model it runs (for a delta) and the registry; Ed25519 signatures are
deterministic, so signing the same state again gives the same bytes and the same ETag.
``issued_at`` is renewed (and the ETag changes) once half the manifest's lifetime has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from agent.signing import key_id, load_private_key, sign_document
from agent.wire import Manifest, SignedManifest
from server.config import ServerConfig
from server.crud import counters
from server.crud.deltas import get_delta
from server.crud.devices import hash_token, runnable_formats
from server.crud.registry import list_variants, version_by_id
from server.db.models import Counter, Device, Rollout, Variant


class Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        return cls(load_private_key(path))

    def sign(self, document: dict[str, Any]) -> SignedManifest:
        return SignedManifest(manifest=document, signature=sign_document(self.key, document), key_id=self.key_id)


@dataclass(frozen=True)
class SignedBody:
    body: bytes
    etag: str


def select_variant(variants: list[Variant], *, preferences: list[str], formats: set[str] | None) -> Variant:
    """The first ready variant named in the class's preferences whose format the device runs; else the reference."""
    by_name = {v.name: v for v in variants}
    for name in preferences:
        variant = by_name.get(name)
        if variant is None or variant.status != "ready" or not variant.sha256:
            continue
        if formats is None or variant.format in formats:
            return variant
    reference = by_name.get("reference")
    if reference is None:
        raise LookupError("the version has no reference variant")
    return reference


def build_manifest(session: Session, *, device: Device, config: ServerConfig, public_url: str) -> dict[str, Any]:
    assert device.desired_version_id is not None and device.desired_issued_at is not None
    model, version = version_by_id(session, version_id=device.desired_version_id)
    preferences = config.device_classes.get(device.device_class or "", [])
    variant = select_variant(list_variants(session, version_id=version.id), preferences=preferences,
                             formats=runnable_formats(device))
    assert variant.sha256 is not None and variant.format is not None and variant.size is not None
    delta = None
    if device.model_sha256 and device.model_sha256 != variant.sha256:
        row = get_delta(session, from_sha256=device.model_sha256, to_sha256=variant.sha256)
        if row is not None:
            delta = {"from_sha256": row.from_sha256, "sha256": row.sha256, "size": row.size,
                     "url": f"{public_url}/v1/deltas/{row.from_sha256}/{variant.sha256}"}
    rollout = session.get(Rollout, device.desired_rollout_id) if device.desired_rollout_id else None
    manifest = Manifest.model_validate(dict(
        device_id=device.id,
        model={"name": model.name, "version": version.version, "sha256": variant.sha256, "task": version.task,
               "labels": version.labels, "preprocess": version.preprocess},
        artifact={"sha256": variant.sha256, "size": variant.size, "format": variant.format, "variant": variant.name,
                  "url": f"{public_url}/v1/artifacts/{variant.sha256}"},
        delta=delta,
        runtime=version.runtime_hints or {},
        trial=rollout.trial if rollout else None,
        shadow=rollout.shadow if rollout else None,
        rollout_id=device.desired_rollout_id,
        revert=bool(device.desired_revert),
        drift_profile=version.drift_profile,
        issued_at=device.desired_issued_at,
        expires_at=device.desired_issued_at + config.manifest_ttl_s,
    ))
    return manifest.model_dump(mode="json")


class ManifestService:
    """Signed manifests with a small per-process cache keyed by everything the body depends on."""

    def __init__(self, config: ServerConfig, signer: Signer, public_url: str, size: int = 65536) -> None:
        self.config = config
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self._cache: OrderedDict[str, tuple[tuple[Any, ...], SignedBody]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def _state_key(self, session: Session, device: Device) -> tuple[Any, ...]:
        return (device.desired_version_id, device.desired_rollout_id, bool(device.desired_revert),
                device.desired_issued_at, device.device_class, json.dumps((device.hw or {}).get("runtimes")),
                device.model_sha256, counters.read(session))

    def cached(self, engine: Engine, *, device_id: str, token: str, now: float) -> SignedBody | None:
        """The hot path of a check-in: one read-only query; None means "take the full path"
        (unknown token, no desired state, cache miss or a manifest due for renewal)."""
        generation = select(Counter.value).where(Counter.name == "registry").scalar_subquery()
        query = select(Device.token_hash, Device.desired_version_id, Device.desired_rollout_id, Device.desired_revert,
                       Device.desired_issued_at, Device.device_class, Device.hw, Device.model_sha256,
                       generation).where(Device.id == device_id)
        with engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None or row[0] is None or not hmac.compare_digest(row[0], hash_token(token)):
            return None
        if row[1] is None or row[4] is None or now >= row[4] + self.config.manifest_ttl_s / 2:
            return None
        key = (row[1], row[2], bool(row[3]), row[4], row[5], json.dumps((row[6] or {}).get("runtimes")), row[7],
               int(row[8] or 0))
        with self._lock:
            hit = self._cache.get(device_id)
        return hit[1] if hit is not None and hit[0] == key else None

    def signed(self, session: Session, *, device: Device, now: float) -> SignedBody | None:
        """None when the device has no desired state. May renew ``issued_at`` (the caller commits)."""
        if device.desired_version_id is None:
            return None
        if device.desired_issued_at is None or now >= device.desired_issued_at + self.config.manifest_ttl_s / 2:
            device.desired_issued_at = now
        key = self._state_key(session, device)
        with self._lock:
            hit = self._cache.get(device.id)
            if hit is not None and hit[0] == key:
                self._cache.move_to_end(device.id)
                return hit[1]
        document = build_manifest(session, device=device, config=self.config, public_url=self.public_url)
        body = self.signer.sign(document).model_dump_json().encode()
        signed = SignedBody(body, '"' + hashlib.sha256(body).hexdigest()[:40] + '"')
        with self._lock:
            self._cache[device.id] = (key, signed)
            self._cache.move_to_end(device.id)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return signed

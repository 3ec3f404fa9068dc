"""Desired-state manifests: variant selection, Ed25519 signature, ETag.

The signed body depends only on the device's stored desired state (with its ``issued_at`` and
``generation``), its class and runtimes, the model it runs (for a delta), the registry, the signing key
and the form; Ed25519 signatures are deterministic, so signing the same state again gives the same bytes
and the same ETag. ``issued_at`` is renewed (and the ETag changes) once half the manifest's lifetime has
passed. Two forms (docs/ota.md "Formats"): RFC 8785 with ``signatures`` for agents that ask for
``MANIFEST_MEDIA_TYPE``, and the legacy form for the agents before it (``legacy_manifests``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from edgefleet.agent.errors import SignatureError
from edgefleet.agent.signing import canonical_json, sign_canonical, sign_document
from edgefleet.agent.wire import Manifest, SignedManifest
from edgefleet.server.config import ServerConfig
from edgefleet.server.crud import counters
from edgefleet.server.crud.deltas import deltas_between
from edgefleet.server.crud.devices import hash_token, runnable_formats
from edgefleet.server.crud.registry import list_variants, version_by_id
from edgefleet.server.db.models import Counter, Device, Rollout
from edgefleet.server.transfers import DeltaOffer, Transfer, choose_transfer
from edgefleet.server.trust import Material, ServerTrust

log = logging.getLogger("edgefleet.server.manifests")
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Signer:
    """Signs with the online key of the newest root (server/trust.py), reloaded after ``rotate-key``."""

    def __init__(self, trust: ServerTrust) -> None:
        self.trust = trust

    @classmethod
    def from_config(cls, config: ServerConfig) -> Signer:
        signer = cls(ServerTrust(config.signing_key, config.trust_dir))
        signer.material()  # fail at start-up, not at the first check-in, when key and root disagree
        return signer

    def material(self) -> Material:
        return self.trust.material()

    def sign(self, document: dict[str, Any], *, legacy: bool = False,
             encoded: dict[str, bytes] | None = None) -> SignedManifest:
        """``encoded``: members of ``document`` already in RFC 8785 form (the release's drift profile)."""
        material = self.material()
        if legacy:
            return SignedManifest(manifest=document, signature=sign_document(material.key, document),
                                  key_id=material.key_id)
        signature = sign_canonical(material.key, document, encoded)
        return SignedManifest.model_validate({"manifest": document, "signatures": [signature],
                                              "root_version": material.root_version})


@dataclass(frozen=True)
class SignedBody:
    body: bytes
    etag: str


class VariantLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def format(self) -> str | None: ...


V = TypeVar("V", bound=VariantLike)


def select_variant(variants: Sequence[V], *, preferences: list[str], formats: set[str] | None) -> V:
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


@dataclass(frozen=True)
class VariantInfo:
    name: str
    status: str
    sha256: str | None
    format: str | None
    size: int | None
    base_sha256: str | None = None  # a delta-q8 variant: the artifact it was made from
    of: str | None = None  # a delta-q8 variant: the variant it approximates


@dataclass(frozen=True)
class Release:
    """What a manifest names of one model version, read once per registry generation (versions do not change;
    their variants do, and each change bumps the generation)."""

    model_name: str
    version: int
    task: str
    labels: list[str] | None
    preprocess: dict[str, Any] | None
    runtime_hints: dict[str, Any] | None
    drift_profile: dict[str, Any] | None
    variants: tuple[VariantInfo, ...]
    drift_canonical: bytes | None = None  # the drift profile in RFC 8785 form: the bulk of a manifest, shared

    @classmethod
    def load(cls, session: Session, version_id: int) -> Release:
        model, version = version_by_id(session, version_id=version_id)
        profile, encoded = version.drift_profile, None
        if profile is not None:
            try:
                encoded = canonical_json(profile)
            except SignatureError as exc:  # drift is informative: a profile that cannot be signed is left out
                log.warning("%s v%d: drift profile left out of manifests: %s", model.name, version.version, exc)
                profile = None
        return cls(model.name, version.version, version.task, version.labels, version.preprocess,
                   version.runtime_hints, profile,
                   tuple(VariantInfo(v.name, v.status, v.sha256, v.format, v.size,
                                     (v.report or {}).get("base_sha256"), (v.report or {}).get("of"))
                         for v in list_variants(session, version_id=version_id)), encoded)


@dataclass(frozen=True)
class RolloutTerms:
    """A rollout's trial and shadow specs: fixed when the rollout is created."""

    trial: dict[str, Any] | None
    shadow: dict[str, Any] | None


def build_manifest(*, device: Device, release: Release, variant: VariantInfo, terms: RolloutTerms | None,
                   delta: DeltaOffer | None, config: ServerConfig, public_url: str) -> dict[str, Any]:
    """The manifest document for a device; ``delta`` is the patch chosen from what it runs to ``variant``."""
    assert device.desired_issued_at is not None
    assert variant.sha256 is not None and variant.format is not None and variant.size is not None
    delta_doc = None
    if delta is not None:
        query = "" if delta.algorithm == "bsdiff4" else f"?algorithm={delta.algorithm}"
        delta_doc = {"from_sha256": delta.from_sha256, "sha256": delta.sha256, "size": delta.size,
                     "algorithm": delta.algorithm,
                     "url": f"{public_url}/v1/deltas/{delta.from_sha256}/{variant.sha256}{query}"}
    manifest = Manifest.model_validate(dict(
        device_id=device.id,
        model={"name": release.model_name, "version": release.version, "sha256": variant.sha256,
               "task": release.task, "labels": release.labels, "preprocess": release.preprocess},
        artifact={"sha256": variant.sha256, "size": variant.size, "format": variant.format, "variant": variant.name,
                  "url": f"{public_url}/v1/artifacts/{variant.sha256}"},
        delta=delta_doc,
        runtime=release.runtime_hints or {},
        trial=terms.trial if terms else None,
        shadow=terms.shadow if terms else None,
        rollout_id=device.desired_rollout_id,
        revert=bool(device.desired_revert),
        drift_profile=release.drift_profile,
        issued_at=device.desired_issued_at,
        expires_at=device.desired_issued_at + config.manifest_ttl_s,
        generation=device.generation or 0,
    ))
    return manifest.model_dump(mode="json")


def variant_for(device: Device, release: Release, config: ServerConfig) -> VariantInfo:
    return select_variant(release.variants, preferences=config.device_classes.get(device.device_class or "", []),
                          formats=runnable_formats(device))


class _Lru(Generic[K, T]):
    def __init__(self, size: int) -> None:
        self._items: OrderedDict[K, T] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: K) -> T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class ManifestService:
    """Signed manifests with a small per-process cache keyed by everything the body depends on."""

    def __init__(self, config: ServerConfig, signer: Signer, public_url: str, size: int = 65536) -> None:
        self.config = config
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self._signed: _Lru[str, tuple[tuple[Any, ...], SignedBody]] = _Lru(size)
        # what many devices share: a release per (version, generation), a rollout's terms, a delta row
        self._releases: _Lru[tuple[int, int], Release] = _Lru(64)
        self._terms: _Lru[int, RolloutTerms] = _Lru(256)
        self._deltas: _Lru[tuple[str, str, int], tuple[tuple[str, str, int], ...]] = _Lru(1024)

    def _state_key(self, session: Session, device: Device, legacy: bool) -> tuple[Any, ...]:
        return (device.desired_version_id, device.desired_rollout_id, bool(device.desired_revert),
                device.desired_issued_at, device.device_class, json.dumps((device.hw or {}).get("runtimes")),
                device.model_sha256, device.generation or 0, self._form(legacy), counters.read(session))

    def _form(self, legacy: bool) -> tuple[bool, str, int]:
        material = self.signer.material()
        return legacy, material.key_id, material.root_version

    def cached(self, engine: Engine, *, device_id: str, token: str, now: float,
               legacy: bool = False) -> SignedBody | None:
        """The hot path of a check-in: one read-only query; None means "take the full path"
        (unknown token, no desired state, cache miss or a manifest due for renewal)."""
        generation = select(Counter.value).where(Counter.name == "registry").scalar_subquery()
        query = select(Device.token_hash, Device.desired_version_id, Device.desired_rollout_id, Device.desired_revert,
                       Device.desired_issued_at, Device.device_class, Device.hw, Device.model_sha256,
                       Device.generation, generation).where(Device.id == device_id)
        with engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None or row[0] is None or not hmac.compare_digest(row[0], hash_token(token)):
            return None
        if row[1] is None or row[4] is None or now >= row[4] + self.config.manifest_ttl_s / 2:
            return None
        key = (row[1], row[2], bool(row[3]), row[4], row[5], json.dumps((row[6] or {}).get("runtimes")), row[7],
               int(row[8] or 0), self._form(legacy), int(row[9] or 0))
        hit = self._signed.get(device_id)
        return hit[1] if hit is not None and hit[0] == key else None

    def signed(self, session: Session, *, device: Device, now: float, legacy: bool = False) -> SignedBody | None:
        """None when the device has no desired state. May renew ``issued_at`` (the caller commits)."""
        if device.desired_version_id is None:
            return None
        if device.desired_issued_at is None or now >= device.desired_issued_at + self.config.manifest_ttl_s / 2:
            device.desired_issued_at = now
        key = self._state_key(session, device, legacy)
        hit = self._signed.get(device.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        generation = key[-1]  # the registry's
        release = self._release(session, device.desired_version_id, generation)
        transfer = self.transfer(session, device, release, generation)
        assert isinstance(transfer.variant, VariantInfo)  # one of release.variants
        document = build_manifest(device=device, release=release, variant=transfer.variant,
                                  terms=self._rollout_terms(session, device), delta=transfer.delta,
                                  config=self.config, public_url=self.public_url)
        encoded = {"drift_profile": release.drift_canonical} if release.drift_canonical is not None else None
        signed = self.signer.sign(document, legacy=legacy, encoded=encoded)
        body = signed.model_dump_json(exclude_none=True, exclude_defaults=legacy).encode()
        answer = SignedBody(body, '"' + hashlib.sha256(body).hexdigest()[:40] + '"')
        self._signed.put(device.id, (key, answer))
        return answer

    def _release(self, session: Session, version_id: int, generation: int) -> Release:
        release = self._releases.get((version_id, generation))
        if release is None:
            release = Release.load(session, version_id)
            self._releases.put((version_id, generation), release)
        return release

    def _rollout_terms(self, session: Session, device: Device) -> RolloutTerms | None:
        if device.desired_rollout_id is None:
            return None
        terms = self._terms.get(device.desired_rollout_id)
        if terms is None:
            rollout = session.get(Rollout, device.desired_rollout_id)
            if rollout is None:
                return None
            terms = RolloutTerms(rollout.trial, rollout.shadow)
            self._terms.put(device.desired_rollout_id, terms)
        return terms

    def transfer(self, session: Session, device: Device, release: Release, generation: int) -> Transfer:
        """The smallest valid way from what the device runs to its variant (server/transfers.py)."""
        return choose_transfer(device.model_sha256, variant_for(device, release, self.config), release.variants,
                               lambda a, b: self._deltas_between(session, a, b, generation))

    def _deltas_between(self, session: Session, current: str, target: str,
                        generation: int) -> tuple[tuple[str, str, int], ...]:
        key = (current, target, generation)
        found = self._deltas.get(key)
        if found is None:
            found = tuple((row.algorithm, row.sha256, row.size)
                          for row in deltas_between(session, from_sha256=current, to_sha256=target))
            self._deltas.put(key, found)
        return found

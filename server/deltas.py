"""bsdiff4 patches between two stored artifacts, made once by a background job and kept in the store.

bsdiff runs in a bounded child process (server/sandbox.py: CPU budget ``sandbox.delta_cpu_s``, memory
``sandbox.delta_memory_mb``), one at a time, and only for pairs within ``MAX_DELTA_BYTES``; the download route
never makes one. Until a patch exists, manifests offer the full artifact only.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.errors import EdgefleetError
from server.config import ServerConfig
from server.crud import NotFound
from server.crud import deltas as crud
from server.crud.devices import runnable_formats
from server.crud.registry import list_variants
from server.db import Database
from server.db.models import Device, Rollout, RolloutDevice
from server.jobs import JobKind
from server.sandbox import Limits, SandboxError, run
from server.storage import ArtifactStore

_lock = threading.Lock()
# bsdiff holds both files and a suffix array in memory (~ 9x the larger file): bigger ones go whole
MAX_DELTA_BYTES = 256 * 1024 * 1024
# patches for models up to this size are made before a rollout's first wave starts (milliseconds)
INLINE_DELTA_BYTES = 8 * 1024 * 1024
BSDIFF_MEMORY_FACTOR = 12  # address space bsdiff needs per byte of the larger file (both files, suffix array)
BSDIFF_BASE_MB = 256  # the interpreter and bsdiff4 themselves


class DeltaRefused(EdgefleetError):
    """The pair cannot be diffed within the limits (too large, over the CPU budget or the memory)."""


def delta_limits(config: ServerConfig) -> Limits:
    cpu = config.sandbox.delta_cpu_s
    return Limits(timeout_s=cpu * 2 + 30, cpu_s=cpu, memory_mb=config.sandbox.delta_memory_mb)


def bsdiff_fits(size: int, limits: Limits) -> str | None:
    """None when a pair whose larger file has ``size`` bytes may be diffed; else why not."""
    if size > MAX_DELTA_BYTES:
        return f"larger than MAX_DELTA_BYTES ({MAX_DELTA_BYTES} bytes)"
    if BSDIFF_BASE_MB + size * BSDIFF_MEMORY_FACTOR / 2**20 > limits.memory_mb:
        return f"bsdiff would need more than sandbox.delta_memory_mb ({limits.memory_mb} MB)"
    return None


def ensure_delta(db: Database, store: ArtifactStore, *, from_sha256: str, to_sha256: str,
                 limits: Limits) -> tuple[str, int]:
    """(patch sha256, size) for from→to, making and storing the patch (in a bounded child) when there is none.
    Only background jobs call this."""
    with db.session() as session:
        row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256)
        if row is not None and store.exists(row.sha256):
            return row.sha256, row.size
    for sha in (from_sha256, to_sha256):
        if not store.exists(sha):
            raise NotFound(f"artifact {sha} is not stored")
    why = bsdiff_fits(max(store.size(from_sha256), store.size(to_sha256)), limits)
    if why is not None:
        raise DeltaRefused(why)
    with _lock:  # one bsdiff at a time: it holds both files in memory
        with db.session() as session:
            row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256)
            if row is not None and store.exists(row.sha256):
                return row.sha256, row.size
        scratch = store.scratch_dir()
        temporary: list[Path] = []
        try:
            local: dict[str, Path] = {}
            for sha in (from_sha256, to_sha256):
                path = store.path(sha)
                if path is None:  # a remote store: copy it down first
                    fd, name = tempfile.mkstemp(dir=scratch, prefix="src-")
                    with os.fdopen(fd, "wb") as out, store.open(sha) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    path = Path(name)
                    temporary.append(path)
                local[sha] = path
            fd, patch_name = tempfile.mkstemp(dir=scratch, prefix="delta-")
            os.close(fd)
            patch = Path(patch_name)
            temporary.append(patch)
            try:
                run("bsdiff", {"old": str(local[from_sha256]), "new": str(local[to_sha256]), "patch": str(patch)},
                    limits)
            except SandboxError as exc:
                raise DeltaRefused(f"bsdiff {exc}") from exc
            sha256, size = store.put_file(patch)
        finally:
            for path in temporary:
                path.unlink(missing_ok=True)
        try:
            with db.session() as session:
                crud.record_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, sha256=sha256, size=size)
        except IntegrityError:  # another replica made and recorded the same patch meanwhile
            with db.session() as session:
                row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256)
                if row is None:
                    raise
                return row.sha256, row.size
        return sha256, size


def rollout_delta_pairs(session: Session, *, rollout_id: int, config: ServerConfig) -> set[tuple[str, str]]:
    """(from, to) artifact pairs the devices of a rollout will ask for: what each runs → its variant."""
    from server.manifests import select_variant

    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return set()
    variants = list_variants(session, version_id=rollout.version_id)
    members = select(Device).join(RolloutDevice, RolloutDevice.device_id == Device.id).where(
        RolloutDevice.rollout_id == rollout_id, Device.model_sha256.is_not(None))
    # a fleet has few distinct (model, class, runtimes): choose the variant once per combination
    kinds: set[tuple[str, str, frozenset[str] | None]] = set()
    for device in session.scalars(members):
        runnable = runnable_formats(device)
        kinds.add((str(device.model_sha256), device.device_class or "",
                   frozenset(runnable) if runnable is not None else None))
    pairs: set[tuple[str, str]] = set()
    for current, device_class, formats in kinds:
        try:
            variant = select_variant(variants, preferences=config.device_classes.get(device_class, []),
                                     formats=set(formats) if formats is not None else None)
        except LookupError:
            continue
        if variant.sha256 and variant.sha256 != current:
            pairs.add((current, variant.sha256))
    return pairs


def rollout_artifact_bytes(state: Any, rollout_id: int) -> int:
    """The bytes bsdiff would read for a rollout's patches (the larger side of each pair)."""
    with state.db.session() as session:
        pairs = rollout_delta_pairs(session, rollout_id=rollout_id, config=state.config)
    return sum(max(_size(state.store, a), _size(state.store, b)) for a, b in pairs)


def _size(store: ArtifactStore, sha256: str) -> int:
    return store.size(sha256) if store.exists(sha256) else 0


KIND = "deltas"  # a rollout's patches (params: rollout_id)
PAIR_KIND = "delta"  # one patch an operator asked for (params: from, to)


def deltas_job(db: Database, store: ArtifactStore, config: ServerConfig) -> JobKind:
    """The job that makes a big rollout's patches in the background (params: rollout_id)."""
    return JobKind(lambda _job_id, params, progress: prepare_rollout_deltas(
        db, store, config, int(params["rollout_id"]), progress))


def pair_job(db: Database, store: ArtifactStore, config: ServerConfig) -> JobKind:
    def build(_job_id: int, params: dict[str, Any], _progress: Callable[[float, str], None]) -> dict[str, Any]:
        sha256, size = ensure_delta(db, store, from_sha256=str(params["from"]), to_sha256=str(params["to"]),
                                    limits=delta_limits(config))
        return {"from": params["from"], "to": params["to"], "sha256": sha256, "size": size}

    return JobKind(build)


def prepare_rollout_deltas(db: Database, store: ArtifactStore, config: ServerConfig, rollout_id: int,
                           progress: Callable[[float, str], None]) -> dict[str, Any]:
    """Make the patches a rollout's devices will want before its waves reach them (a background job)."""
    with db.session() as session:
        pairs = sorted(rollout_delta_pairs(session, rollout_id=rollout_id, config=config))
    made: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for index, (from_sha, to_sha) in enumerate(pairs):
        progress(index / max(1, len(pairs)), f"delta {from_sha[:12]} → {to_sha[:12]}")
        if not (store.exists(from_sha) and store.exists(to_sha)):
            skipped.append({"from": from_sha, "to": to_sha, "reason": "artifact not stored"})
            continue
        try:
            sha256, size = ensure_delta(db, store, from_sha256=from_sha, to_sha256=to_sha,
                                        limits=delta_limits(config))
        except DeltaRefused as exc:
            skipped.append({"from": from_sha, "to": to_sha, "reason": str(exc)})
            continue
        made.append({"from": from_sha, "to": to_sha, "sha256": sha256, "size": size})
    return {"rollout_id": rollout_id, "deltas": made, "skipped": skipped}

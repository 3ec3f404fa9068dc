"""Patches between two stored artifacts, made once by a background job and kept in the store.

Two algorithms: ``bsdiff4`` (bytes; any file) and ``tensor`` (ONNX / TFLite: tensor by tensor, see
server/tensordelta.py). Both run in a bounded child process (server/sandbox.py: CPU budget
``sandbox.delta_cpu_s``, memory ``sandbox.delta_memory_mb``), one at a time, bsdiff only for pairs within
``MAX_DELTA_BYTES``; the download route never makes one, and until a patch exists manifests offer the full
artifact only. A rollout makes the patches its devices will want before its waves reach them, and — where
every float weight moved — a validated ``delta-q8`` variant (server/deltavariant.py); the manifest then
offers the smallest valid option (server/transfers.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgefleet.agent.errors import EdgefleetError
from edgefleet.server.config import ServerConfig
from edgefleet.server.crud import NotFound
from edgefleet.server.crud import deltas as crud
from edgefleet.server.crud.devices import runnable_formats
from edgefleet.server.crud.registry import list_variants
from edgefleet.server.db import Database
from edgefleet.server.db.models import Device, Rollout, RolloutDevice
from edgefleet.server.jobs import JobKind
from edgefleet.server.sandbox import Limits, SandboxError, run
from edgefleet.server.storage import ArtifactStore
from edgefleet.server.tensors import NotParsable
from edgefleet.server.transfers import choose_transfer, is_delta_variant

log = logging.getLogger("edgefleet.server.deltas")
_lock = threading.Lock()
# bsdiff holds both files and a suffix array in memory (~ 9x the larger file): bigger ones go whole
MAX_DELTA_BYTES = 256 * 1024 * 1024
# a tensor delta maps both files and holds one tensor at a time (and the skeleton)
MAX_TENSOR_DELTA_BYTES = 8 * 1024 * 1024 * 1024
# patches for models up to this size are made before a rollout's first wave starts (milliseconds)
INLINE_DELTA_BYTES = 8 * 1024 * 1024
BSDIFF_MEMORY_FACTOR = 12  # address space bsdiff needs per byte of the larger file (both files, suffix array)
BSDIFF_BASE_MB = 256  # the interpreter and bsdiff4 themselves


class DeltaRefused(EdgefleetError):
    """The pair cannot be diffed within the limits (too large, over the CPU budget or the memory)."""


def delta_limits(config: ServerConfig) -> Limits:
    cpu = config.sandbox.delta_cpu_s
    return Limits(timeout_s=cpu * 2 + 30, cpu_s=cpu, memory_mb=config.sandbox.delta_memory_mb)


def delta_fits(algorithm: str, size: int, limits: Limits) -> str | None:
    """None when a pair whose larger file has ``size`` bytes may be diffed with ``algorithm``; else why not."""
    if algorithm == "tensor":
        return None if size <= MAX_TENSOR_DELTA_BYTES else \
            f"larger than MAX_TENSOR_DELTA_BYTES ({MAX_TENSOR_DELTA_BYTES} bytes)"
    if size > MAX_DELTA_BYTES:
        return f"larger than MAX_DELTA_BYTES ({MAX_DELTA_BYTES} bytes)"
    if BSDIFF_BASE_MB + size * BSDIFF_MEMORY_FACTOR / 2**20 > limits.memory_mb:
        return f"bsdiff would need more than sandbox.delta_memory_mb ({limits.memory_mb} MB)"
    return None


def bsdiff_fits(size: int, limits: Limits) -> str | None:
    return delta_fits("bsdiff4", size, limits)


@contextmanager
def local_files(store: ArtifactStore, shas: list[str]) -> Iterator[list[Path]]:
    """Paths of stored artifacts on this machine (a remote store's are copied into scratch for the block)."""
    temporary: list[Path] = []
    try:
        local: list[Path] = []
        for sha in shas:
            path = store.path(sha)
            if path is None:
                fd, name = tempfile.mkstemp(dir=store.scratch_dir(), prefix="src-")
                with os.fdopen(fd, "wb") as out, store.open(sha) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                path = Path(name)
                temporary.append(path)
            local.append(path)
        yield local
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


@contextmanager
def scratch_file(store: ArtifactStore, prefix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=store.scratch_dir(), prefix=prefix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _make(algorithm: str, old: Path, new: Path, patch: Path, limits: Limits) -> dict[str, Any] | None:
    """Write the patch old→new in a bounded child; the tensor delta's summary (None for bsdiff)."""
    task = "bsdiff" if algorithm == "bsdiff4" else "tensor_delta"
    try:
        result = run(task, {"old": str(old), "new": str(new), "patch": str(patch)}, limits)
    except SandboxError as exc:
        if exc.detail == "not_parsable":
            raise NotParsable(str(exc)) from exc
        raise DeltaRefused(f"{algorithm} {exc}") from exc
    return result.get("summary") if algorithm == "tensor" else None


def ensure_delta(db: Database, store: ArtifactStore, *, from_sha256: str, to_sha256: str, limits: Limits,
                 algorithm: str = "bsdiff4") -> tuple[str, int]:
    """(patch sha256, size) for from→to, making and storing the patch (in a bounded child) when there is none.
    Only background jobs call this. NotFound for an artifact that is not stored; DeltaRefused past the limits;
    NotParsable when a tensor delta cannot be made between these files."""
    if algorithm not in crud.ALGORITHMS:
        raise ValueError(f"unknown delta algorithm {algorithm!r}: one of {', '.join(crud.ALGORITHMS)}")
    with db.session() as session:
        row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, algorithm=algorithm)
        if row is not None and store.exists(row.sha256):
            return row.sha256, row.size
    for sha in (from_sha256, to_sha256):
        if not store.exists(sha):
            raise NotFound(f"artifact {sha} is not stored")
    why = delta_fits(algorithm, max(store.size(from_sha256), store.size(to_sha256)), limits)
    if why is not None:
        raise DeltaRefused(why)
    with _lock:  # one patch at a time: bsdiff holds both files in memory
        with db.session() as session:
            row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, algorithm=algorithm)
            if row is not None and store.exists(row.sha256):
                return row.sha256, row.size
        with local_files(store, [from_sha256, to_sha256]) as (old, new), scratch_file(store, "delta-") as patch:
            report = _make(algorithm, old, new, patch, limits)
            sha256, size = store.put_file(patch)
        try:
            with db.session() as session:
                crud.record_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, sha256=sha256, size=size,
                                  algorithm=algorithm, report=report)
        except IntegrityError:  # another replica made and recorded the same patch meanwhile
            with db.session() as session:
                row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, algorithm=algorithm)
                if row is None:
                    raise
                return row.sha256, row.size
        return sha256, size


def rollout_delta_pairs(session: Session, *, rollout_id: int, config: ServerConfig) -> set[tuple[str, str]]:
    """(from, to) artifact pairs the devices of a rollout will ask for: what each runs → its variant."""
    return {(current, target) for current, target, _ in rollout_transfer_kinds(session, rollout_id=rollout_id,
                                                                                config=config)}


def _member_kinds(session: Session, rollout_id: int) -> Counter[tuple[str | None, str, frozenset[str] | None]]:
    """Devices of a rollout by (what they run, class, runnable formats): a fleet has few distinct kinds."""
    members = select(Device).join(RolloutDevice, RolloutDevice.device_id == Device.id).where(
        RolloutDevice.rollout_id == rollout_id)
    kinds: Counter[tuple[str | None, str, frozenset[str] | None]] = Counter()
    for device in session.scalars(members):
        runnable = runnable_formats(device)
        kinds[(device.model_sha256, device.device_class or "",
               frozenset(runnable) if runnable is not None else None)] += 1
    return kinds


def rollout_transfer_kinds(session: Session, *, rollout_id: int,
                           config: ServerConfig) -> set[tuple[str, str, str]]:
    """(what a device runs, the variant's sha256, the variant's name) for each kind of device in a rollout."""
    from edgefleet.server.manifests import select_variant

    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return set()
    variants = [v for v in list_variants(session, version_id=rollout.version_id) if not is_delta_variant(v.name)]
    found: set[tuple[str, str, str]] = set()
    for current, device_class, formats in _member_kinds(session, rollout_id):
        if current is None:
            continue
        try:
            variant = select_variant(variants, preferences=config.device_classes.get(device_class, []),
                                     formats=set(formats) if formats is not None else None)
        except LookupError:
            continue
        if variant.sha256 and variant.sha256 != current:
            found.add((current, variant.sha256, variant.name))
    return found


def rollout_transfers(session: Session, *, rollout_id: int, config: ServerConfig) -> list[dict[str, Any]]:
    """What each kind of device in a rollout is offered (the manifest's choice) and how many devices that is."""
    from edgefleet.server.manifests import Release, select_variant

    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return []
    release = Release.load(session, rollout.version_id)

    def lookup(current: str, target: str) -> list[tuple[str, str, int]]:
        return [(r.algorithm, r.sha256, r.size) for r in crud.deltas_between(session, from_sha256=current,
                                                                              to_sha256=target)]

    plans: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (current, device_class, formats), count in _member_kinds(session, rollout_id).items():
        try:
            variant = select_variant(release.variants, preferences=config.device_classes.get(device_class, []),
                                     formats=set(formats) if formats is not None else None)
        except LookupError:
            continue
        transfer = choose_transfer(current, variant, release.variants, lookup).public()
        key = (current, *transfer.values())
        plan = plans.setdefault(key, {"from_sha256": current, **transfer, "devices": 0})
        plan["devices"] += count
    return sorted(plans.values(), key=lambda p: (-p["devices"], str(p["from_sha256"])))


def rollout_artifact_bytes(state: Any, rollout_id: int) -> int:
    """The bytes bsdiff would read for a rollout's patches (the larger side of each pair)."""
    with state.db.session() as session:
        pairs = rollout_delta_pairs(session, rollout_id=rollout_id, config=state.config)
    return sum(max(_size(state.store, a), _size(state.store, b)) for a, b in pairs)


def _size(store: ArtifactStore, sha256: str) -> int:
    return store.size(sha256) if store.exists(sha256) else 0


KIND = "deltas"  # a rollout's patches (params: rollout_id)
PAIR_KIND = "delta"  # one patch an operator asked for (params: from, to, algorithm)


def deltas_job(db: Database, store: ArtifactStore, config: ServerConfig) -> JobKind:
    """The job that makes a big rollout's patches in the background (params: rollout_id)."""
    return JobKind(lambda _job_id, params, progress: prepare_rollout_deltas(
        db, store, config, int(params["rollout_id"]), progress))


def pair_job(db: Database, store: ArtifactStore, config: ServerConfig) -> JobKind:
    def build(_job_id: int, params: dict[str, Any], _progress: Callable[[float, str], None]) -> dict[str, Any]:
        algorithm = str(params.get("algorithm", "bsdiff4"))
        sha256, size = ensure_delta(db, store, from_sha256=str(params["from"]), to_sha256=str(params["to"]),
                                    limits=delta_limits(config), algorithm=algorithm)
        return {"from": params["from"], "to": params["to"], "algorithm": algorithm, "sha256": sha256, "size": size}

    return JobKind(build)


def prepare_rollout_deltas(db: Database, store: ArtifactStore, config: ServerConfig, rollout_id: int,
                           progress: Callable[[float, str], None]) -> dict[str, Any]:
    """Make the patches (and delta variants) a rollout's devices will want before its waves reach them."""
    from edgefleet.server.deltavariant import maybe_build_delta_variant

    with db.session() as session:
        kinds = sorted(rollout_transfer_kinds(session, rollout_id=rollout_id, config=config))
        rollout = session.get(Rollout, rollout_id)
        version_id = rollout.version_id if rollout is not None else None
    made: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for index, (from_sha, to_sha, variant_name) in enumerate(kinds):
        progress(index / max(1, len(kinds)), f"delta {from_sha[:12]} → {to_sha[:12]}")
        if not (store.exists(from_sha) and store.exists(to_sha)):
            skipped.append({"from": from_sha, "to": to_sha, "reason": "artifact not stored"})
            continue
        larger = max(store.size(from_sha), store.size(to_sha))
        for algorithm in crud.ALGORITHMS:
            try:
                sha256, size = ensure_delta(db, store, from_sha256=from_sha, to_sha256=to_sha, algorithm=algorithm,
                                            limits=delta_limits(config))
            except (DeltaRefused, NotParsable) as exc:
                skipped.append({"from": from_sha, "to": to_sha, "algorithm": algorithm, "reason": str(exc)})
                continue
            made.append({"from": from_sha, "to": to_sha, "algorithm": algorithm, "sha256": sha256, "size": size})
        if version_id is not None and larger <= MAX_TENSOR_DELTA_BYTES:
            try:
                outcome = maybe_build_delta_variant(db, store, version_id=version_id, base_sha256=from_sha,
                                                    variant_name=variant_name)
            except Exception as exc:  # the exact options stand without it
                log.exception("delta-q8 variant from %s failed", from_sha[:12])
                outcome = {"variant": "delta-q8", "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            if outcome is not None:
                made.append(outcome)
    return {"rollout_id": rollout_id, "deltas": made, "skipped": skipped}


def version_deltas(session: Session, *, version_id: int) -> list[dict[str, Any]]:
    """Every stored delta into a variant of the version, and whether the manifest would choose it for a device
    running its ``from`` artifact (against the full artifact and the other deltas)."""
    from edgefleet.server.manifests import Release

    release = Release.load(session, version_id)
    by_sha = {v.sha256: v for v in release.variants if v.sha256}
    by_name = {v.name: v for v in release.variants}
    rows = crud.deltas_to(session, to_sha256s=list(by_sha))

    def lookup(current: str, target: str) -> list[tuple[str, str, int]]:
        return [(r.algorithm, r.sha256, r.size) for r in rows if (r.from_sha256, r.to_sha256) == (current, target)]

    out: list[dict[str, Any]] = []
    for row in rows:
        to = by_sha[row.to_sha256]
        exact = by_name.get(to.of or "") if is_delta_variant(to.name) else to
        if exact is None or exact.sha256 is None:
            continue
        chosen = choose_transfer(row.from_sha256, exact, release.variants, lookup)
        full = int(exact.size or 0)
        out.append({"from_sha256": row.from_sha256, "to_sha256": row.to_sha256, "to_variant": to.name,
                    "algorithm": row.algorithm, "size": row.size, "full_size": full,
                    "ratio": round(row.size / full, 4) if full else None,
                    "chosen": chosen.delta is not None and chosen.delta.sha256 == row.sha256
                    and chosen.variant.sha256 == row.to_sha256})
    return out

"""``delta-q8`` variants: base + an 8-bit per-tensor quantization of (new − base), validated like any variant.

After a fine-tune every float weight moves a little and even an exact tensor delta carries ~15 bits per
weight (the new values' own entropy). A delta-q8 variant carries 8 bits or fewer: each changed float32
tensor of the new version becomes ``base + scale * q`` (q int8, agent/ota/tensordelta.py ``q8_apply``),
so the device still rebuilds exact bytes with their own sha256. It is made for one base (what devices
run) and one target variant, and ships only when it validates against that target (top-1 agreement,
cosine: ``DELTA_Q8``) and its delta is clearly smaller than the best exact option.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from edgefleet.server.crud import deltas as crud
from edgefleet.server.crud.registry import version_by_id
from edgefleet.server.db import Database
from edgefleet.server.db.models import Variant
from edgefleet.server.deltas import local_files, scratch_file
from edgefleet.server.optimize import Thresholds
from edgefleet.server.storage import ArtifactStore
from edgefleet.server.transfers import DELTA_VARIANT as PREFIX

log = logging.getLogger("edgefleet.server.deltavariant")

DELTA_Q8 = Thresholds(top1_min=0.99, cosine_min=0.999, max_rel_abs_error=None)
MIN_CHANGED_FLOAT32 = 0.5  # a version "whose weights all moved": changed float32 tensors hold this share of the data
MAX_RATIO = 0.9  # of the best exact option (full, bsdiff or tensor delta): a lossy variant must save clearly


def delta_variant_name(base_sha256: str, of: str) -> str:
    """``delta-q8@<base>`` for the reference, ``delta-q8:<variant>@<base>`` for another variant."""
    return f"{PREFIX}@{base_sha256[:12]}" if of == "reference" else f"{PREFIX}:{of}@{base_sha256[:12]}"


def _samples(store: ArtifactStore, sha256: str | None) -> dict[str, np.ndarray] | None:
    if not sha256 or not store.exists(sha256):
        return None
    with store.open(sha256) as handle, np.load(handle, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def maybe_build_delta_variant(db: Database, store: ArtifactStore, *, version_id: int, base_sha256: str,
                              variant_name: str = "reference") -> dict[str, Any] | None:
    """Build, validate and publish the delta-q8 variant of (version's ``variant_name``, base) once; None when
    there is nothing to do (already decided, or the weights did not all move)."""
    name = delta_variant_name(base_sha256, variant_name)
    with db.session() as session:
        _model, version = version_by_id(session, version_id=version_id)
        rows = {v.name: v for v in session.scalars(select(Variant).where(Variant.version_id == version_id))}
        target = rows.get(variant_name)
        if name in rows or target is None or not target.sha256 or target.status != "ready":
            return None
        target_sha, fmt, full = target.sha256, str(target.format), int(target.size or 0)
        exact = {row.algorithm: (row.size, row.report) for row in
                 crud.deltas_between(session, from_sha256=base_sha256, to_sha256=target_sha)}
        task = "classifier" if version.task == "classification" else "other"
        calibration = version.calibration_sha256
    tensor = exact.get("tensor")
    if tensor is None or not tensor[1]:
        return None  # no exact tensor delta: not two models with matching tensors
    moved = float(tensor[1].get("changed_float32_share") or 0.0)
    if moved < MIN_CHANGED_FLOAT32:
        return None  # a partial retrain (or an int8 model): the exact tensor delta is already what changed
    best = min([full, *(size for size, _ in exact.values())])
    report: dict[str, Any] = {"recipe": PREFIX, "what": "base + int8 per-tensor quantization of (new - base)",
                              "of": variant_name, "base_sha256": base_sha256, "target_sha256": target_sha,
                              "exact_best_bytes": best, "changed_float32_share": moved}
    with local_files(store, [base_sha256, target_sha]) as (base, new), \
            scratch_file(store, "q8delta-") as patch, scratch_file(store, "q8variant-") as variant:
        outcome = _build(store, base, new, patch, variant, report, best=best, task=task,
                         samples=_samples(store, calibration))
        status = "ready" if outcome is not None else "failed"
        with db.session() as session:
            sha256: str | None = None
            size: int | None = None
            if outcome is not None:
                sha256, size, delta_sha, delta_size, stats = outcome
                crud.record_delta(session, from_sha256=base_sha256, to_sha256=sha256, sha256=delta_sha,
                                  size=delta_size, algorithm="tensor", report=stats)
            crud.put_delta_variant(session, version_id=version_id, name=name, status=status, sha256=sha256,
                                   size=size, fmt=fmt, report=report)
    log.info("%s of version id %d: %s (%s)", name, version_id, status, report.get("reason") or "validated")
    return {"variant": name, "status": status, "reason": report.get("reason"), "bytes": report.get("delta_bytes")}


def _build(store: ArtifactStore, base: Path, new: Path, patch: Path, variant: Path, report: dict[str, Any], *,
           best: int, task: str, samples: dict[str, np.ndarray] | None) -> tuple[str, int, str, int, Any] | None:
    """Make, judge and store the variant and its delta; None (with ``report["reason"]``) when it must not ship."""
    from edgefleet.server.optimize._runner import open_model
    from edgefleet.server.optimize._validate import synthetic_samples, validate_variant
    from edgefleet.server.tensordelta import build_tensor_delta
    from edgefleet.server.tensors import NotParsable, read_layout

    try:
        stats = build_tensor_delta(read_layout(base, external=False), read_layout(new, external=False), patch,
                                   q8=True, variant_out=[variant])
    except NotParsable as exc:
        report.update(decision="rejected", reason=str(exc))
        return None
    size = patch.stat().st_size
    report.update(delta_bytes=size, delta_ratio=round(size / best, 4) if best else None,
                  quantized_tensors=stats.quantized)
    if not stats.quantized:
        report.update(decision="rejected", reason="no changed float32 tensor to quantize")
        return None
    if size > MAX_RATIO * best:
        report.update(decision="rejected", reason=f"its delta ({size} bytes) is not under {MAX_RATIO:g}x the best "
                                                  f"exact option ({best} bytes)")
        return None
    try:
        reference = open_model(new)
        rows = samples if samples is not None else synthetic_samples(reference.inputs)
        check = validate_variant(new, variant, samples=rows, task=task, thresholds=DELTA_Q8, latency=False,
                                 reference=reference)
    except Exception as exc:  # a model the server cannot run cannot be proven: it does not ship
        report.update(decision="rejected", reason=f"cannot validate here: {str(exc).splitlines()[0][:200]}")
        return None
    report["samples"] = {"kind": "operator" if samples is not None else "synthetic",
                         "rows": len(next(iter(rows.values())))}
    report["validation"] = {k: check[k] for k in ("loads", "runtime", "task", "thresholds", "samples", "outputs",
                                                  "passed", "reasons") if k in check}
    report["size"] = check.get("size")
    if not check.get("passed"):
        report.update(decision="rejected", reason="validation failed: " + "; ".join(check.get("reasons") or []))
        return None
    sha256, variant_size = store.put_file(variant)
    delta_sha, delta_size = store.put_file(patch)
    report.update(decision="ready", reason=None, sha256=sha256)
    return sha256, variant_size, delta_sha, delta_size, stats.summary()

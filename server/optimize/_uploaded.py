"""Variants an operator uploads ready-made (e.g. Edge TPU-compiled TFLite), validated like the others."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelLoadError
from edgefleet.server.optimize._runner import detect_format, open_model
from edgefleet.server.optimize._tflite import NEEDS_DELEGATE, is_edgetpu_compiled
from edgefleet.server.optimize._types import LOSSY, OptimizeError, Thresholds, VariantResult
from edgefleet.server.optimize._validate import check_samples, synthetic_samples, validate_variant

POLICIES = ("reject", "accept")


def validate_uploaded_variant(reference_path: Path, variant_path: Path, *, name: str = "uploaded",
                              samples: dict[str, np.ndarray] | None = None, task: str = "other",
                              thresholds: Thresholds | None = None,
                              unverifiable: str = "reject") -> VariantResult:
    """Validate an uploaded variant against its reference on ``samples`` (synthetic when None).

    A model that needs an accelerator the server lacks (an Edge TPU-compiled TFLite) cannot run
    here: the report says so, and ``unverifiable`` decides — ``"reject"`` (default) or
    ``"accept"`` (ready, but marked unvalidated).
    """
    if unverifiable not in POLICIES:
        raise OptimizeError(f"unknown policy {unverifiable!r}: one of {', '.join(POLICIES)}")
    if not variant_path.is_file():
        raise OptimizeError(f"{variant_path}: no such file")
    fmt = detect_format(variant_path)
    try:
        ref = open_model(reference_path)
    except ModelLoadError as exc:
        raise OptimizeError(f"reference model: {exc}") from exc
    rows = check_samples(samples, ref.inputs) if samples is not None else synthetic_samples(ref.inputs)
    report: dict[str, Any] = {
        "recipe": "uploaded", "what": "ready-made variant uploaded by the operator",
        "reference": {"file": reference_path.name, "format": detect_format(reference_path)},
        "samples": {"kind": "operator" if samples is not None else "synthetic", "rows": len(next(iter(rows.values())))},
        "sha256": hashlib.sha256(variant_path.read_bytes()).hexdigest(), "notes": [],
        "edgetpu_compiled": fmt == "tflite" and is_edgetpu_compiled(variant_path)}
    check = validate_variant(reference_path, variant_path, samples=rows, task=task,
                             thresholds=thresholds or LOSSY, reference=ref)
    report["validation"] = {k: check[k] for k in ("loads", "runtime", "task", "thresholds", "samples", "outputs",
                                                  "passed", "reasons") if k in check}
    report["size"], report["latency"] = check.get("size"), check.get("latency")
    if not check.get("loads", False) and report["edgetpu_compiled"]:
        report["validated"] = False
        report["notes"].append(check["reasons"][0])
        report["reason"] = NEEDS_DELEGATE
        if unverifiable == "accept":
            report["decision"] = "ready (unvalidated: operator policy accepts models the server cannot run)"
            return VariantResult(name, variant_path, fmt, "ready", report)
        report["decision"] = "rejected"
        return VariantResult(name, variant_path, fmt, "rejected", report)
    report["validated"] = True
    if not check["passed"]:
        report.update(decision="rejected", reason="validation failed: " + "; ".join(check["reasons"]))
        return VariantResult(name, variant_path, fmt, "rejected", report)
    report.update(decision="ready", reason=None)
    return VariantResult(name, variant_path, fmt, "ready", report)

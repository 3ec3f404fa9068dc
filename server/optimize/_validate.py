"""Prove a candidate against its reference: it loads, its outputs agree, and what it costs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelLoadError
from edgefleet.server.calibration import CalibrationError, check_calibration
from edgefleet.server.optimize._runner import InputSpec, Runner, interleaved_p50_ms, open_model, run_rows
from edgefleet.server.optimize._sizes import compressed, sizes
from edgefleet.server.optimize._types import LOSSY, OptimizeError, Thresholds

TASKS = ("classifier", "other")


def synthetic_samples(inputs: list[InputSpec], count: int = 8, seed: int = 0,
                      dynamic: int = 64) -> dict[str, np.ndarray]:
    """Inputs drawn from the model's signature: batch ``count``, other dynamic dims ``dynamic``."""
    if not inputs:
        raise OptimizeError("the model carries no input signature (TorchScript): upload calibration/sample inputs")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        dims = list(spec.shape)
        shape = [count if (i == 0 and (d is None or d == 1) and len(dims) > 1) else (dynamic if d is None else d)
                 for i, d in enumerate(dims)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 100, shape).astype(dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype)
    return out


def check_samples(samples: Mapping[str, np.ndarray], inputs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Calibration/sample arrays keyed by input name, each with the batch (sample) axis first."""
    try:
        return check_calibration(samples, [(s.name, s.shape, s.dtype) for s in inputs])
    except CalibrationError as exc:
        raise OptimizeError(str(exc)) from exc


def first_row(samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in samples.items()}


def compare(ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], task: str,
            thresholds: Thresholds) -> dict[str, Any]:
    """Agreement metrics per output (matched by name, else by position) and whether they pass."""
    if task not in TASKS:
        raise OptimizeError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    if len(ref) != len(cand):
        return {"outputs": {}, "passed": False,
                "reasons": [f"candidate has {len(cand)} outputs, reference has {len(ref)}"]}
    pairs = ([(n, n) for n in ref] if set(ref) == set(cand) else list(zip(ref, cand, strict=True)))
    outputs: dict[str, Any] = {}
    reasons: list[str] = []
    for rname, cname in pairs:
        r, c = np.asarray(ref[rname]), np.asarray(cand[cname])
        m: dict[str, Any] = {}
        outputs[rname] = m
        if r.shape != c.shape:
            reasons.append(f"{rname}: shape {list(c.shape)} != reference {list(r.shape)}")
            continue
        if r.dtype.kind not in "fc":
            m["exact_match"] = float(np.mean(r == c)) if r.size else 1.0
            if m["exact_match"] < thresholds.top1_min:
                reasons.append(f"{rname}: exact match {m['exact_match']:.4f} < {thresholds.top1_min}")
            continue
        r64, c64 = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        if not np.all(np.isfinite(c64)):
            reasons.append(f"{rname}: candidate output has NaN/Inf")
            continue
        denom = float(np.linalg.norm(r64) * np.linalg.norm(c64))
        m["cosine"] = round(float(r64 @ c64) / denom, 6) if denom else (1.0 if not r64.any() and not c64.any() else 0.0)
        m["max_abs_error"] = float(np.max(np.abs(r64 - c64))) if r64.size else 0.0
        scale = float(np.max(np.abs(r64))) if r64.size else 0.0
        m["max_rel_abs_error"] = round(m["max_abs_error"] / scale, 6) if scale else m["max_abs_error"]
        is_classifier = task == "classifier" and r.ndim >= 2 and r.shape[-1] > 1
        if is_classifier:
            top_r, top_c = r.reshape(-1, r.shape[-1]).argmax(-1), c.reshape(-1, c.shape[-1]).argmax(-1)
            m["top1_agreement"] = round(float(np.mean(top_r == top_c)), 6)
            if m["top1_agreement"] < thresholds.top1_min:
                reasons.append(f"{rname}: top-1 agreement {m['top1_agreement']:.4f} < {thresholds.top1_min}")
        elif m["cosine"] < thresholds.cosine_min:
            reasons.append(f"{rname}: cosine {m['cosine']:.6f} < {thresholds.cosine_min}")
        if thresholds.max_rel_abs_error is not None and m["max_rel_abs_error"] > thresholds.max_rel_abs_error:
            reasons.append(f"{rname}: max abs error {m['max_abs_error']:.3g} is {m['max_rel_abs_error']:.3g} of "
                           f"max|ref|, over {thresholds.max_rel_abs_error}")
    return {"outputs": outputs, "passed": not reasons, "reasons": reasons}


def validate_variant(reference_path: Path, candidate_path: Path, *, samples: dict[str, np.ndarray], task: str,
                     thresholds: Thresholds | None = None, latency: bool = True,
                     reference: Runner | None = None) -> dict[str, Any]:
    """Load both, run both on ``samples`` (batch axis first), compare, size and time them.

    Returns the validation report; ``report["passed"]`` says whether the candidate may ship and
    ``report["reasons"]`` why not. A reference that cannot load raises :class:`OptimizeError`.
    """
    limits = thresholds or LOSSY
    report: dict[str, Any] = {"task": task, "thresholds": limits.as_dict(), "samples": _count(samples)}
    try:
        ref = reference or open_model(reference_path)
    except ModelLoadError as exc:
        raise OptimizeError(f"reference model: {exc}") from exc
    feeds = check_samples(samples, ref.inputs)
    ref_out = run_rows(ref, feeds)
    try:
        cand = open_model(candidate_path)
    except ModelLoadError as exc:
        report.update(loads=False, passed=False, reasons=[f"does not load: {exc}"])
        return report
    report.update(loads=True, runtime=cand.runtime)
    try:
        cand_feeds = {s.name: v for s, v in zip(cand.inputs, feeds.values(), strict=True)} if cand.inputs else feeds
        cand_out = run_rows(cand, cand_feeds)
    except Exception as exc:  # any runtime failure on real inputs is a validation failure, not a crash
        report.update(passed=False, reasons=[f"fails to run on the samples: {str(exc).splitlines()[0][:300]}"])
        return report
    report.update(compare(ref_out, cand_out, task, limits))
    report["size"] = _size_report(reference_path, candidate_path)
    if latency:
        one = first_row(feeds)
        cand_one = {s.name: v for s, v in zip(cand.inputs, one.values(), strict=True)} if cand.inputs else one
        r_lat, c_lat = interleaved_p50_ms([(ref, one), (cand, cand_one)], budget_s=6.0)  # 3 s each, as before
        report["latency"] = {"p50_ms": c_lat["p50_ms"], "reference_p50_ms": r_lat["p50_ms"],
                             "ratio": round(c_lat["p50_ms"] / r_lat["p50_ms"], 3) if r_lat["p50_ms"] else None,
                             "runs": c_lat["runs"], "threads": 1, "where": "server CPU, one row per call",
                             "load_ms": round(cand.load_ms, 2), "reference_load_ms": round(ref.load_ms, 2)}
    return report


def _size_report(reference: Path, candidate: Path) -> dict[str, Any]:
    r, c = sizes(reference), sizes(candidate)
    return {**c, "reference": r, "raw_ratio": round(c["raw_bytes"] / r["raw_bytes"], 4),
            "compressed_ratio": round(compressed(c) / compressed(r), 4),
            "compressed_with": "zstd-19" if c.get("zstd_bytes") else "gzip-9"}


def _count(samples: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(samples.values()))) if samples else 0

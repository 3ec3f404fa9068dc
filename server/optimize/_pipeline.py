"""build_variants: make each recipe's candidate, validate it, keep it only when it is better on the
axis it was made for. Candidates are built in a staging folder beside ``out_dir`` and renamed in
when done, so a failed or interrupted job leaves nothing half-written in ``out_dir``."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelLoadError
from edgefleet.server.optimize import _onnx_recipes as onnx_r
from edgefleet.server.optimize import _tflite
from edgefleet.server.optimize._runner import Runner, detect_format, open_model
from edgefleet.server.optimize._torch_export import export_torchscript
from edgefleet.server.optimize._types import EXACT, FP16, LOSSY, OptimizeError, Thresholds, VariantResult
from edgefleet.server.optimize._validate import check_samples, synthetic_samples, validate_variant

Progress = Callable[[float, str], None]
FORMATS = ("onnx", "tflite", "torchscript")
SLACK_MS = 0.05  # latency differences below this are noise, never a reason


@dataclass(frozen=True)
class Recipe:
    name: str
    what: str
    axis: str  # latency | size | compressed_size | reach | accelerator
    thresholds: Thresholds
    source: str  # the format it starts from


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("onnx-from-torchscript", "TorchScript exported to ONNX (torch.onnx.export, dynamic batch)", "reach",
           EXACT, "torchscript"),
    Recipe("onnx-opt", "ONNX Runtime offline graph optimization, BASIC level (standard ONNX ops only)", "latency",
           EXACT, "onnx"),
    Recipe("onnx-opt-extended", "ONNX Runtime offline graph optimization, EXTENDED level (fused com.microsoft ops)",
           "latency", EXACT, "onnx"),
    Recipe("cpu-int8-dynamic", "int8 dynamic quantization of MatMul/Gemm weights (quantize_dynamic)", "size",
           LOSSY, "onnx"),
    Recipe("cpu-int8-static", "int8 static QDQ quantization calibrated on sample inputs (quantize_static)", "size",
           LOSSY, "onnx"),
    Recipe("gpu-fp16", "fp16 weights and activations, fp32 inputs/outputs (convert_float_to_float16)", "size",
           FP16, "onnx"),
    Recipe("pruned", "magnitude pruning of large weight tensors (most aggressive sparsity that validates)",
           "compressed_size", LOSSY, "onnx"),
    Recipe("clustered", "weight sharing: k-means clustering of large weight tensors (fewest clusters that "
           "validate)", "compressed_size", LOSSY, "onnx"),
    Recipe("edgetpu", "Edge TPU compilation (edgetpu_compiler) of a fully int8 TFLite model", "accelerator",
           LOSSY, "tflite"),
)}

TARGETS: dict[str, list[str]] = {
    "cpu": ["onnx-opt", "onnx-opt-extended", "cpu-int8-dynamic", "cpu-int8-static", "pruned", "clustered"],
    "cpu-int8": ["cpu-int8-static", "cpu-int8-dynamic"],
    "gpu": ["onnx-opt", "gpu-fp16"],
    "jetson": ["onnx-opt", "gpu-fp16", "cpu-int8-static"],
    "small-download": ["pruned", "clustered", "cpu-int8-dynamic"],
    "edgetpu": ["edgetpu"],
}
SPARSITIES = (0.75, 0.5, 0.3, 0.15)
CLUSTERS = (16, 32, 64, 256)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decide(recipe: Recipe, report: dict[str, Any], max_slowdown: float) -> list[str]:
    """Reasons to reject a candidate that validated, judged on the recipe's own axis."""
    size, lat = report["size"], report.get("latency", {})
    p50, ref_p50 = lat.get("p50_ms", 0.0), lat.get("reference_p50_ms", 0.0)

    def slower(limit: float) -> bool:
        return p50 > ref_p50 * limit and p50 - ref_p50 > SLACK_MS

    reasons: list[str] = []
    if recipe.axis == "latency":
        nodes = report["params"]
        faster = p50 < ref_p50 * 0.95 and ref_p50 - p50 > SLACK_MS
        if nodes["nodes_after"] >= nodes["nodes_before"] and not faster:
            reasons.append(f"nothing gained: graph unchanged ({nodes['nodes_before']} nodes) and p50 "
                           f"x{lat.get('ratio')} of the reference")
        if slower(1.10):
            reasons.append(f"slower: p50 {p50:.3f} ms vs {ref_p50:.3f} ms (x{lat['ratio']})")
    elif recipe.axis == "size":
        if size["raw_ratio"] > 0.9:
            reasons.append(f"not smaller: {size['raw_bytes']} bytes vs {size['reference']['raw_bytes']} "
                           f"(x{size['raw_ratio']})")
        if recipe.name != "gpu-fp16" and slower(max_slowdown):
            reasons.append(f"too slow on CPU: p50 {p50:.3f} ms vs {ref_p50:.3f} ms (x{lat['ratio']}, "
                           f"limit x{max_slowdown})")
    elif recipe.axis == "compressed_size" and size["compressed_ratio"] > 0.9:
        reasons.append(f"download not smaller: {size['compressed_with']} x{size['compressed_ratio']} of the reference")
    return reasons


class _Job:
    def __init__(self, reference: Path, fmt: str, target: str, out_dir: Path, samples: dict[str, np.ndarray],
                 sample_source: dict[str, Any], task: str, progress: Progress, max_slowdown: float,
                 ref_runner: Runner) -> None:
        self.reference, self.fmt, self.target, self.out_dir = reference, fmt, target, out_dir
        self.samples, self.sample_source, self.task = samples, sample_source, task
        self.progress, self.max_slowdown, self.ref_runner = progress, max_slowdown, ref_runner
        self.ref_sha = _sha256(reference)

    def base_report(self, recipe: Recipe) -> dict[str, Any]:
        return {"recipe": recipe.name, "what": recipe.what, "target": self.target, "axis": recipe.axis,
                "reference": {"file": self.reference.name, "format": self.fmt, "sha256": self.ref_sha},
                "samples": self.sample_source, "notes": []}

    def validate(self, candidate: Path, thresholds: Thresholds, latency: bool = True) -> dict[str, Any]:
        return validate_variant(self.reference, candidate, samples=self.samples, task=self.task,
                                thresholds=thresholds, latency=latency, reference=self.ref_runner)

    def search(self, recipe: Recipe, src: Path, stage: Path, levels: tuple[Any, ...],
               build: Callable[[Path, Path, Any], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
        """Try ``levels`` from most to least aggressive; the first that validates and gains is the candidate."""
        tried: list[dict[str, Any]] = []
        for level in levels:
            dst = stage / f"{recipe.name}-{level}.onnx"
            info = build(src, dst, level)
            check = self.validate(dst, recipe.thresholds, latency=False)
            gain = check.get("size", {}).get("compressed_ratio")
            tried.append({"level": level, "passed": check["passed"], "compressed_ratio": gain,
                          "reasons": check["reasons"]})
            if check["passed"] and gain is not None and gain <= 0.9:
                info["search"] = tried
                return dst, info
        info["search"] = tried
        return dst, info


def build_variants(reference_path: Path, fmt: str, target: str, out_dir: Path,
                   calibration: dict[str, np.ndarray] | None,
                   progress: Progress = lambda f, msg: None,
                   *, task: str = "other", max_slowdown: float = 1.5,
                   recipes: list[str] | None = None) -> list[VariantResult]:
    """Make, validate and choose the variants of ``reference_path`` for device class ``target``.

    ``calibration`` maps input name to an array of sample rows (an operator's ``.npz``); without it
    synthetic inputs are drawn from the model's signature and every report says so. Ready variants
    land in ``out_dir/<name>.<ext>``, rejected ones that produced a file in ``out_dir/rejected/``.
    Raises :class:`OptimizeError` (nothing written) when the request itself is unusable.
    """
    if fmt not in FORMATS:
        raise OptimizeError(f"unknown model format {fmt!r}: one of {', '.join(FORMATS)}")
    names = recipes if recipes is not None else TARGETS.get(target)
    if names is None:
        raise OptimizeError(f"unknown target {target!r}: one of {', '.join(sorted(TARGETS))}")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise OptimizeError(f"unknown recipe(s) {', '.join(unknown)}: one of {', '.join(RECIPES)}")
    if task not in ("classifier", "other"):
        raise OptimizeError(f"unknown task {task!r}: one of classifier, other")
    if detect_format(reference_path) != fmt:
        raise OptimizeError(f"{reference_path.name} is not a {fmt} model (looks like {detect_format(reference_path)})")
    progress(0.0, f"loading reference {reference_path.name}")
    try:
        ref = open_model(reference_path)
    except ModelLoadError as exc:
        raise OptimizeError(f"reference model: {exc}") from exc
    if calibration is not None:
        samples = check_samples(calibration, ref.inputs)
        source = {"kind": "operator", "rows": len(next(iter(samples.values()))),
                  "note": "operator-uploaded calibration data (also used for validation)"}
    else:
        samples = synthetic_samples(ref.inputs)
        source = {"kind": "synthetic", "rows": len(next(iter(samples.values()))),
                  "note": "no calibration data uploaded: synthetic uniform(-1, 1) inputs were used for "
                          "calibration and validation"}
    if fmt == "torchscript" and "onnx-from-torchscript" not in names and target != "edgetpu":
        names = ["onnx-from-torchscript", *names]
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    job = _Job(reference_path, fmt, target, out_dir, samples, source, task, progress, max_slowdown, ref)
    results: list[VariantResult] = []
    onnx_source: Path | None = reference_path if fmt == "onnx" else None
    onnx_missing = "the reference is not ONNX"
    try:
        for i, name in enumerate(names):
            recipe = RECIPES[name]
            progress(i / len(names), f"{name}: building")
            result = _one(job, recipe, stage, onnx_source, onnx_missing, _sub(progress, i, len(names), name))
            results.append(result)
            if name == "onnx-from-torchscript":
                if result.ready and result.path is not None:
                    onnx_source = result.path
                else:
                    onnx_missing = "the TorchScript → ONNX export was rejected"
        ready = sum(r.ready for r in results)
        progress(1.0, f"done: {ready} ready, {len(results) - ready} rejected")
        return results
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _sub(progress: Progress, i: int, n: int, name: str) -> Progress:
    def report(f: float, msg: str) -> None:
        progress((i + f) / n, f"{name}: {msg}")

    return report


def _one(job: _Job, recipe: Recipe, stage: Path, onnx_source: Path | None, onnx_missing: str,
         progress: Progress) -> VariantResult:
    report = job.base_report(recipe)
    fmt_out = "tflite" if recipe.source == "tflite" else "onnx"
    ext = ".tflite" if fmt_out == "tflite" else ".onnx"

    def rejected(reason: str, path: Path | None = None) -> VariantResult:
        report.update(decision="rejected", reason=reason)
        return VariantResult(recipe.name, path, fmt_out, "rejected", report)

    if recipe.source == "torchscript" and job.fmt != "torchscript":
        return rejected("not applicable: the reference is not TorchScript")
    if recipe.source == "tflite" and job.fmt != "tflite":
        return rejected("not applicable: Edge TPU compilation needs a fully int8-quantized TFLite reference")
    if recipe.source == "onnx" and onnx_source is None:
        return rejected(f"not applicable: {onnx_missing}")
    candidate = stage / f"{recipe.name}{ext}"
    try:
        if recipe.name == "onnx-from-torchscript":
            info = export_torchscript(job.reference, candidate, job.samples)
        elif recipe.name == "edgetpu":
            info = _tflite.compile_edgetpu(job.reference, candidate)
        else:
            assert onnx_source is not None
            src = onnx_source
            if recipe.name == "onnx-opt":
                info = onnx_r.graph_optimize(src, candidate, "ORT_ENABLE_BASIC")
            elif recipe.name == "onnx-opt-extended":
                info = onnx_r.graph_optimize(src, candidate, "ORT_ENABLE_EXTENDED")
            elif recipe.name == "cpu-int8-dynamic":
                info = onnx_r.int8_dynamic(src, candidate)
            elif recipe.name == "cpu-int8-static":
                info = onnx_r.int8_static(src, candidate, job.samples)
            elif recipe.name == "gpu-fp16":
                info = onnx_r.fp16(src, candidate)
            elif recipe.name == "pruned":
                candidate, info = job.search(recipe, src, stage, SPARSITIES,
                                             lambda s, d, lv: onnx_r.prune(s, d, lv))
            else:
                candidate, info = job.search(recipe, src, stage, CLUSTERS,
                                             lambda s, d, lv: onnx_r.cluster(s, d, lv))
    except onnx_r.RecipeNotApplicable as exc:
        return rejected(f"not applicable: {exc}")
    except Exception as exc:  # a recipe that crashes rejects its own variant, never the whole job
        return rejected(f"{recipe.name} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                        if str(exc).strip() else f"{recipe.name} failed: {type(exc).__name__}")
    report["notes"] += info.pop("notes", [])
    report.update(info)
    progress(0.5, "validating")
    check = job.validate(candidate, recipe.thresholds)
    report["validation"] = {k: check[k] for k in ("loads", "runtime", "task", "thresholds", "samples", "outputs",
                                                  "passed", "reasons") if k in check}
    report["size"], report["latency"] = check.get("size"), check.get("latency")
    report["sha256"] = _sha256(candidate)
    if not check["passed"]:
        reason = "validation failed: " + "; ".join(check["reasons"])
    else:
        reasons = _decide(recipe, report, job.max_slowdown)
        reason = "; ".join(reasons)
    final_dir = job.out_dir / "rejected" if reason else job.out_dir
    final_dir.mkdir(parents=True, exist_ok=True)
    final = final_dir / f"{recipe.name}{ext}"
    os.replace(candidate, final)
    if reason:
        return rejected(reason, final)
    report.update(decision="ready", reason=None)
    return VariantResult(recipe.name, final, fmt_out, "ready", report)

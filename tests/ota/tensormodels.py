"""Generated models for the tensor-delta tests: versions that differ the way real updates do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support.models import _FlatModel


def mlp_weights(seed: int, inputs: int = 32, hidden: int = 64, classes: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((hidden, inputs)) * 0.2).astype(np.float32),
            "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((classes, hidden)) * 0.2).astype(np.float32),
            "b2": (rng.standard_normal(classes) * 0.1).astype(np.float32)}


def fine_tuned(weights: dict[str, np.ndarray], seed: int, relative: float = 1e-3,
               only: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every float weight (or those named in ``only``) moved by ``relative`` of its value (a fine-tune)."""
    rng = np.random.default_rng(seed)
    return {name: (value * (1 + relative * rng.standard_normal(value.shape))).astype(np.float32)
            if only is None or name in only else value for name, value in weights.items()}


def make_tflite_mlp(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """``x`` float32 [1, in] -> FC(w1, b1) -> RELU -> FC(w2, b2) -> ``scores`` float32 [1, classes]."""
    import tflite

    f32 = tflite.TensorType.FLOAT32
    op = tflite.BuiltinOperator
    hidden, inputs = weights["w1"].shape
    classes = weights["w2"].shape[0]
    m = _FlatModel()
    x = m.tensor("x", [1, inputs], f32)
    w1 = m.tensor("dense1/kernel", [hidden, inputs], f32, data=weights["w1"])
    b1 = m.tensor("dense1/bias", [hidden], f32, data=weights["b1"])
    h = m.tensor("dense1", [1, hidden], f32)
    r = m.tensor("relu", [1, hidden], f32)
    w2 = m.tensor("dense2/kernel", [classes, hidden], f32, data=weights["w2"])
    b2 = m.tensor("dense2/bias", [classes], f32, data=weights["b2"])
    y = m.tensor("scores", [1, classes], f32)
    m.op(op.FULLY_CONNECTED, [x, w1, b1], [h])
    m.op(op.RELU, [h], [r])
    m.op(op.FULLY_CONNECTED, [r, w2, b2], [y])
    return m.save(path, [x], [y])


def make_onnx_mlp(path: Path, weights: dict[str, np.ndarray], *, external: str | None = None,
                  constants: bool = False) -> Path:
    """The same MLP in ONNX (``x`` [N, in] -> ``scores``). ``external``: weights in that file beside the
    model; ``constants``: the second layer's weights as Constant nodes instead of initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = weights["w1"].shape[1]
    classes = weights["w2"].shape[0]
    inits = [numpy_helper.from_array(weights["w1"].T.copy(), "w1"), numpy_helper.from_array(weights["b1"], "b1")]
    nodes = []
    if constants:
        nodes += [helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(weights["w2"].T.copy())),
                  helper.make_node("Constant", [], ["b2"], value=numpy_helper.from_array(weights["b2"]))]
    else:
        inits += [numpy_helper.from_array(weights["w2"].T.copy(), "w2"), numpy_helper.from_array(weights["b2"], "b2")]
    nodes += [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
              helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("Gemm", ["r", "w2", "b2"], ["scores"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        onnx.save(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0)
    return path


def mlp_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x @ weights["w1"].T + weights["b1"], 0)
    return (hidden @ weights["w2"].T + weights["b2"]).astype(np.float32)


def image_mlp_weights(seed: int, hidden: int = 512, classes: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((3 * 8 * 8, hidden)) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((hidden, classes)) * 0.1).astype(np.float32)}


def make_image_mlp(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """``image`` float32 [N,3,32,32] -> 4x4 average pool -> flatten -> MatMul w1 -> Relu -> MatMul w2 ->
    Softmax -> ``scores`` [N, classes]: the OTA rig's input, with weights large enough for deltas to matter."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.support.models import _save_onnx

    flat = weights["w1"].shape[0]
    inits = [numpy_helper.from_array(weights["w1"], "w1"), numpy_helper.from_array(weights["w2"], "w2"),
             numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "flat")]
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["pooled", "flat"], ["rows"]),
             helper.make_node("MatMul", ["rows", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "image_mlp",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT,
                                                             ["N", weights["w2"].shape[1]])], inits)
    return _save_onnx(graph, path)


def image_mlp_reference(weights: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    pooled = image.reshape(image.shape[0], 3, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(image.shape[0], -1)
    logits = np.maximum(pooled @ weights["w1"], 0) @ weights["w2"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

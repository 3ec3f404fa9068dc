"""The demo's model: a small conv image classifier written with onnx.helper (no hub, no download).

``make_classifier(path, version)`` writes version 1, or a "fine-tuned" later version whose
weights differ slightly, so a delta between versions is small, as it is in the field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ["background", "person", "bicycle", "car", "dog"]
INPUT_SIZE = 64


def _weights(version: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    weights = {
        "c1_w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "c1_b": np.zeros(8, np.float32),
        "c2_w": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "c2_b": np.zeros(16, np.float32),
        "fc_w": rng.standard_normal((16, len(LABELS))).astype(np.float32),
        "fc_b": np.zeros(len(LABELS), np.float32),
    }
    if version > 1:  # fine-tuning: only the classifier head moves
        tune = np.random.default_rng(version)
        weights["fc_w"] = weights["fc_w"] + tune.standard_normal(weights["fc_w"].shape).astype(np.float32) * 0.05
        weights["fc_b"] = weights["fc_b"] + tune.standard_normal(len(LABELS)).astype(np.float32) * 0.05
    return weights


def make_classifier(path: Path, version: int = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "edgefleet_demo_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        [numpy_helper.from_array(value, name) for name, value in _weights(version).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgefleet-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

"""The demo's model: a small conv image classifier written with onnx.helper (no hub, no download).

``make_classifier(path, version)`` writes version 1, or a "fine-tuned" later version whose
weights differ slightly, so a delta between versions is small, as it is in the field.
``compute=2`` writes the same model computed twice: a second copy of its layers (weights scaled by
a different factor, so no optimizer can merge the two) whose logits are added times zero. The
scores are the same; the arithmetic is ``compute`` times the model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import NodeProto

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


def _layers(prefix: str, weights: str) -> list[NodeProto]:
    """The model's layers on ``image``, naming tensors with ``prefix`` and weights with ``weights``."""
    from onnx import helper

    def t(name: str) -> str:
        return prefix + name

    def w(name: str) -> str:
        return weights + name

    return [
        helper.make_node("Conv", ["image", w("c1_w"), w("c1_b")], [t("c1")], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [t("c1")], [t("r1")]),
        helper.make_node("Conv", [t("r1"), w("c2_w"), w("c2_b")], [t("c2")], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", [t("c2")], [t("r2")]),
        helper.make_node("GlobalAveragePool", [t("r2")], [t("pooled")]),
        helper.make_node("Flatten", [t("pooled")], [t("flat")]),
        helper.make_node("MatMul", [t("flat"), w("fc_w")], [t("logits0")]),
        helper.make_node("Add", [t("logits0"), w("fc_b")], [t("logits")]),
    ]


def make_classifier(path: Path, version: int = 1, *, compute: int = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if compute < 1:
        raise ValueError(f"compute must be 1 or more, not {compute}")
    weights = _weights(version)
    nodes = _layers("", "")
    total = "logits"
    for copy in range(1, compute):  # the same layers again, their logits added times zero
        weights |= {f"x{copy}_{name}": value * (1.0 + copy / 8) for name, value in _weights(version).items()}
        nodes += _layers(f"x{copy}_", f"x{copy}_")
        nodes += [helper.make_node("Mul", [f"x{copy}_logits", "zero"], [f"x{copy}_nothing"]),
                  helper.make_node("Add", [total, f"x{copy}_nothing"], [f"total{copy}"])]
        total = f"total{copy}"
    if compute > 1:
        weights["zero"] = np.zeros(1, np.float32)
    nodes.append(helper.make_node("Softmax", [total], ["scores"], axis=1))
    graph = helper.make_graph(
        nodes, "edgefleet_demo_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgefleet-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

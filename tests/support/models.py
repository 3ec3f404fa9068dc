"""Small models made in code, with outputs the tests can compute by hand.

ONNX models are written with ``onnx.helper``. Every maker returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save_onnx(graph: object, path: Path, opset: int = 13) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def classifier_weights(classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3, classes)).astype(np.float32),
            rng.standard_normal(classes).astype(np.float32))


def make_onnx_image_classifier(path: Path, *, size: int = 32, classes: int = 4, seed: int = 0) -> Path:
    """input ``image`` float32 [N,3,size,size] -> ``scores`` = softmax(mean_hw(image) @ W + b), [N, classes].

    Reference: ``reference_image_classifier(image, classes, seed)``.
    """
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = classifier_weights(classes, seed)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["pooled4"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled4", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save_onnx(graph, path)


def reference_image_classifier(image: np.ndarray, classes: int = 4, seed: int = 0) -> np.ndarray:
    weight, bias = classifier_weights(classes, seed)
    logits = image.astype(np.float32).mean(axis=(2, 3)) @ weight + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)

"""Models with known behaviour for the optimize tests, written with onnx.helper / torch.jit."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(nodes: list, name: str, inputs: list, outputs: list, weights: dict[str, np.ndarray], path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_weights(features: int = 256, hidden: int = 512, classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W1": (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
            "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
            "W2": (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
            "b2": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
            "W3": (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32),
            "b3": np.zeros(classes, np.float32)}


def make_mlp(path: Path, **kw: int) -> Path:
    """``x`` [N, 256] -> ``logits`` [N, 10]: three MatMul+Add layers with Relu; ~1.3 MB of fp32 weights."""
    from onnx import TensorProto, helper

    w = mlp_weights(**kw)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["h2"]),
             helper.make_node("MatMul", ["h2", "W3"], ["m3"]), helper.make_node("Add", ["m3", "b3"], ["logits"])]
    return _save(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w["W1"].shape[0]])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", w["W3"].shape[1]])], w, path)


def mlp_reference(x: np.ndarray, **kw: int) -> np.ndarray:
    w = mlp_weights(**kw)
    h1 = np.maximum(x @ w["W1"] + w["b1"], 0)
    h2 = np.maximum(h1 @ w["W2"] + w["b2"], 0)
    return h2 @ w["W3"] + w["b3"]


def make_convnet(path: Path, seed: int = 0) -> Path:
    """``image`` [N,3,16,16] -> Conv(8,3x3)+Relu -> Conv(8,3x3)+Relu -> GlobalAveragePool -> ``features`` [N,8,1,1].

    No MatMul/Gemm at all: dynamic int8 has nothing to quantize.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = {"C1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "c1": np.zeros(8, np.float32),
         "C2": (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "c2": np.zeros(8, np.float32)}
    nodes = [helper.make_node("Conv", ["image", "C1", "c1"], ["y1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y1"], ["r1"]),
             helper.make_node("Conv", ["r1", "C2", "c2"], ["y2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["features"])]
    return _save(nodes, "convnet", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                 [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, 1, 1])], w, path)


def make_foldable(path: Path) -> Path:
    """``x`` [N,64] -> x @ (Transpose(W) * 2): the weight expression is constant, so BASIC folds it."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    w = {"W": rng.standard_normal((64, 64)).astype(np.float32), "two": np.array(2.0, np.float32)}
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
             helper.make_node("Mul", ["Wt", "two"], ["W2"]),
             helper.make_node("MatMul", ["x", "W2"], ["y"])]
    return _save(nodes, "foldable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], w, path)


def make_scripted(path: Path) -> Path:
    """A torch.nn module (conv + linear head, 2 outputs) scripted to TorchScript."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 5)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
            logits = self.head(pooled)
            return logits, torch.softmax(logits, dim=1)

    torch.manual_seed(0)
    scripted = torch.jit.script(Net().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path

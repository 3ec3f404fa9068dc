"""What the OTA tests share: a real ONNX Runtime model behind the Model protocol, model makers,
signed manifests, and pushing a desired state through the real server's operator routes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import requests

from edgefleet.agent.wire import ModelMeta, TensorSpec
from tests.support.models import _save_onnx, make_onnx_image_classifier
from tests.support.net import SLOWDOWN

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


class OrtModel:
    """A real onnxruntime session with the Model protocol (used until the runtime layer's loader lands)."""

    runtime = "onnxruntime"
    delegate = "CPUExecutionProvider"
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        from edgefleet.agent.errors import ModelLoadError

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {exc}") from exc
        self.path = path
        self.closed = False

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(name=i.name, shape=[d if isinstance(d, int) else None for d in i.shape],
                           dtype=_ORT_TYPES.get(i.type, "float32")) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(name=o.name, shape=[d if isinstance(d, int) else None for d in o.shape],
                           dtype=_ORT_TYPES.get(o.type, "float32")) for o in self.session.get_outputs()]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))

    def close(self) -> None:
        self.closed = True


def ort_loader(path: Path, _meta: ModelMeta, *, threads: int | None = None) -> OrtModel:
    return OrtModel(path, threads=threads or 1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_classifier(path: Path, seed: int) -> Path:
    return make_onnx_image_classifier(path, seed=seed)


def make_slow_classifier(path: Path, seed: int, depth: int = 8, width: int = 384) -> Path:
    """The classifier plus a MatMul chain on the input whose result is added times zero: same scores, slow."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.support.models import classifier_weights

    weight, bias = classifier_weights(4, seed)
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array([-1, 32], dtype=np.int64), "flat"),
             numpy_helper.from_array((rng.standard_normal((32, width)) * 0.01).astype(np.float32), "P"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["l0"]),
             helper.make_node("Reshape", ["image", "flat"], ["rows"]),
             helper.make_node("MatMul", ["rows", "P"], ["h0"])]
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.01).astype(np.float32),
                                             f"M{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"M{i}"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"h{depth}"], ["s"], keepdims=0),
              helper.make_node("Mul", ["s", "zero"], ["z"]),
              helper.make_node("Add", ["l0", "z"], ["l1"]),
              helper.make_node("Add", ["l1", "b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "slow_classifier",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])], inits)
    return _save_onnx(graph, path)


def make_batch_one_only(path: Path, seed: int) -> Path:
    """The classifier, but a Reshape to [1, 3*32*32] fails at runtime for any batch other than 1."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.support.models import classifier_weights

    weight, bias = classifier_weights(4, seed)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array([1, 3, 32, 32], dtype=np.int64), "one")]
    nodes = [helper.make_node("Reshape", ["image", "one"], ["single"]),
             helper.make_node("ReduceMean", ["single"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["l0"]),
             helper.make_node("Add", ["l0", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "batch_one",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])], inits)
    return _save_onnx(graph, path)


def make_big_classifier(path: Path, seed: int, hidden: int = 512, tweak: int = 0) -> Path:
    """A ~1 MB two-layer classifier; ``tweak`` > 0 changes that many weights (a "fine-tuned" copy)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((3 * 32 * 32 // 16, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, 4)).astype(np.float32)
    if tweak:
        fine = np.random.default_rng(seed + 1000)
        idx = fine.choice(w1.size, size=tweak, replace=False)
        w1.flat[idx] += fine.standard_normal(tweak).astype(np.float32) * 0.01
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.array([-1, 3 * 32 * 32 // 16], dtype=np.int64), "shape")]
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "big_classifier",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])], inits)
    return _save_onnx(graph, path)


# --- the real server's operator routes ---------------------------------------------------------


def push(url: str, admin: dict[str, str], name: str, path: Path) -> dict[str, Any]:
    response = requests.post(f"{url}/v1/models/{name}/versions", headers=admin, timeout=30 * SLOWDOWN,
                             files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 201, response.text
    return dict(response.json())


def roll_out(url: str, admin: dict[str, str], name: str, version: int, device_ids: list[str],
             trial: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": name, "version": version, "target": {"device_ids": device_ids},
                            "waves": [100], "gates": {"soak_s": 0}}
    if trial is not None:
        body["trial"] = trial
    response = requests.post(f"{url}/v1/rollouts", headers=admin, json=body, timeout=10)
    assert response.status_code == 201, response.text
    return dict(response.json())


def device_reports(url: str, admin: dict[str, str], rollout_id: int) -> dict[str, str]:
    doc = requests.get(f"{url}/v1/rollouts/{rollout_id}", headers=admin, timeout=5).json()
    return {d["device_id"]: d["state"] for d in doc["devices"]}


def image(batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def now() -> float:
    return time.time()

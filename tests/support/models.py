"""Small models made in code, with outputs the tests can compute by hand.

ONNX models are written with ``onnx.helper``. Every maker returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _save_onnx(graph: Any, path: Path, opset: int = 13) -> Path:
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


def make_onnx_padded_classifier(path: Path, *, seed: int, padding: list[np.ndarray], size: int = 32,
                                classes: int = 4) -> Path:
    """``make_onnx_image_classifier`` plus float32 weight tensors ``pad0``, ``pad1``, ... that weigh on the file
    but not on the scores (their sum is multiplied by zero): versions that differ in those tensors the way a
    fine-tune does. Reference: ``reference_image_classifier(image, classes, seed)``."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = classifier_weights(classes, seed)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["pooled4"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled4", "W"], ["logits0"])]
    total = "logits0"
    for index, values in enumerate(padding):
        inits.append(numpy_helper.from_array(values.astype(np.float32), f"pad{index}"))
        nodes += [helper.make_node("ReduceSum", [f"pad{index}"], [f"pad{index}_sum"], keepdims=0),
                  helper.make_node("Mul", [f"pad{index}_sum", "zero"], [f"pad{index}_zero"]),
                  helper.make_node("Add", [total, f"pad{index}_zero"], [f"logits_p{index}"])]
        total = f"logits_p{index}"
    nodes += [helper.make_node("Add", [total, "b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["scores"], axis=1)]
    graph = helper.make_graph(
        nodes, "padded_image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])], inits)
    return _save_onnx(graph, path)


def reference_image_classifier(image: np.ndarray, classes: int = 4, seed: int = 0) -> np.ndarray:
    weight, bias = classifier_weights(classes, seed)
    logits = image.astype(np.float32).mean(axis=(2, 3)) @ weight + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


# --- TFLite, written as flatbuffers with the ``tflite`` schema package ---------------------------

# Float model (make_tflite_float): inputs a, b float32 [N,4] (dynamic batch, stored as [1,4]).
TFLITE_MUL_CONST = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
TFLITE_FC_WEIGHTS = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=np.float32)
TFLITE_FC_BIAS = np.array([0.5, -1.0, 0.0], dtype=np.float32)
# Quantized model (make_tflite_uint8): input x uint8 [1,4], scale 0.5, zero point 128.
TFLITE_Q_SCALE, TFLITE_Q_ZERO = 0.5, 128


def reference_tflite_float(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    total = (a + b).astype(np.float32)
    return {"sum": total, "scaled": (a * TFLITE_MUL_CONST).astype(np.float32),
            "fc": (a @ TFLITE_FC_WEIGHTS.T + TFLITE_FC_BIAS).astype(np.float32),
            "pairs": total.reshape(-1, 2)}


def reference_tflite_uint8(x: np.ndarray) -> dict[str, np.ndarray]:
    """x is the raw uint8 input; ``doubled`` = 2 * real(x) on the same scale (so q = 2x - 128, clipped)."""
    q = x.astype(np.int32)
    return {"doubled": np.clip(2 * q - 128, 0, 255).astype(np.uint8),
            "grid": x.reshape(2, 2),
            "real": ((q - TFLITE_Q_ZERO) * TFLITE_Q_SCALE).astype(np.float32)}


class _FlatModel:
    """A single-subgraph TFLite model assembled tensor by tensor."""

    def __init__(self) -> None:
        import flatbuffers

        self.b = flatbuffers.Builder(4096)
        self.tensors: list[dict[str, object]] = []
        self.buffers: list[bytes] = [b""]
        self.ops: list[tuple[int, list[int], list[int]]] = []
        self.opcodes: list[tuple[int, str | None]] = []  # (builtin code, custom op name)

    def tensor(self, name: str, shape: list[int], ttype: int, *, data: np.ndarray | None = None,
               quant: tuple[float, int] | None = None, signature: list[int] | None = None) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        self.tensors.append({"name": name, "shape": shape, "type": ttype, "buffer": buffer, "quant": quant,
                             "signature": signature})
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], *, custom: str | None = None) -> None:
        key = (code, custom)
        if key not in self.opcodes:
            self.opcodes.append(key)
        self.ops.append((self.opcodes.index(key), inputs, outputs))

    def _ints(self, values: list[int]) -> int:
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependInt32(v)
        return int(self.b.EndVector())

    def _offsets(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return int(self.b.EndVector())

    def _bytes(self, data: bytes) -> int:
        self.b.StartVector(1, len(data), 16)
        self.b.head = self.b.head - len(data)
        self.b.Bytes[self.b.head:self.b.head + len(data)] = data
        return int(self.b.EndVector())

    def _quant(self, scale: float, zero: int) -> int:
        import tflite

        b = self.b
        b.StartVector(4, 1, 4)
        b.PrependFloat32(scale)
        scales = b.EndVector()
        b.StartVector(8, 1, 8)
        b.PrependInt64(zero)
        zeros = b.EndVector()
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scales)
        tflite.QuantizationParametersAddZeroPoint(b, zeros)
        return int(tflite.QuantizationParametersEnd(b))

    def save(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        import tflite

        b = self.b
        tensor_offs = []
        for t in self.tensors:
            name = b.CreateString(str(t["name"]))
            shape = self._ints(list(t["shape"]))  # type: ignore[call-overload]
            signature = self._ints(list(t["signature"])) if t["signature"] else None  # type: ignore[call-overload]
            quant = self._quant(*t["quant"]) if t["quant"] else None  # type: ignore[misc]
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            if signature is not None:
                tflite.TensorAddShapeSignature(b, signature)
            tflite.TensorAddType(b, int(t["type"]))  # type: ignore[call-overload]
            tflite.TensorAddBuffer(b, int(t["buffer"]))  # type: ignore[call-overload]
            tflite.TensorAddName(b, name)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            tensor_offs.append(tflite.TensorEnd(b))
        op_offs = []
        for index, ins, outs in self.ops:
            in_vec, out_vec = self._ints(ins), self._ints(outs)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, index)
            tflite.OperatorAddInputs(b, in_vec)
            tflite.OperatorAddOutputs(b, out_vec)
            op_offs.append(tflite.OperatorEnd(b))
        tensors_vec, ops_vec = self._offsets(tensor_offs), self._offsets(op_offs)
        in_vec, out_vec = self._ints(inputs), self._ints(outputs)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vec)
        tflite.SubGraphAddInputs(b, in_vec)
        tflite.SubGraphAddOutputs(b, out_vec)
        tflite.SubGraphAddOperators(b, ops_vec)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)
        buffer_offs = []
        for data in self.buffers:
            vec = self._bytes(data) if data else None
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buffer_offs.append(tflite.BufferEnd(b))
        code_offs = []
        for code, custom in self.opcodes:
            custom_name = b.CreateString(custom) if custom else None
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            if custom_name is not None:
                tflite.OperatorCodeAddCustomCode(b, custom_name)
            tflite.OperatorCodeAddVersion(b, 1)
            code_offs.append(tflite.OperatorCodeEnd(b))
        codes_vec, sgs_vec = self._offsets(code_offs), self._offsets([subgraph])
        bufs_vec = self._offsets(buffer_offs)
        desc = b.CreateString("edgefleet test model")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, codes_vec)
        tflite.ModelAddSubgraphs(b, sgs_vec)
        tflite.ModelAddBuffers(b, bufs_vec)
        tflite.ModelAddDescription(b, desc)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(b.Output()))
        return path


def make_tflite_float(path: Path) -> Path:
    """inputs ``a``, ``b`` float32 [N,4] (dynamic batch) -> ``sum`` = a+b, ``scaled`` = a*[2,-1,.5,3],
    ``fc`` = a @ W.T + bias [N,3], ``pairs`` = reshape(a+b, [-1,2]). Reference: ``reference_tflite_float``."""
    import tflite

    f32, i32 = tflite.TensorType.FLOAT32, tflite.TensorType.INT32
    op = tflite.BuiltinOperator
    m = _FlatModel()
    a = m.tensor("a", [1, 4], f32, signature=[-1, 4])
    b = m.tensor("b", [1, 4], f32, signature=[-1, 4])
    const = m.tensor("mul_const", [4], f32, data=TFLITE_MUL_CONST)
    weights = m.tensor("fc_weights", [3, 4], f32, data=TFLITE_FC_WEIGHTS)
    bias = m.tensor("fc_bias", [3], f32, data=TFLITE_FC_BIAS)
    new_shape = m.tensor("pairs_shape", [2], i32, data=np.array([-1, 2], dtype=np.int32))
    total = m.tensor("sum", [1, 4], f32, signature=[-1, 4])
    scaled = m.tensor("scaled", [1, 4], f32, signature=[-1, 4])
    fc = m.tensor("fc", [1, 3], f32, signature=[-1, 3])
    pairs = m.tensor("pairs", [2, 2], f32, signature=[-1, 2])
    m.op(op.ADD, [a, b], [total])
    m.op(op.MUL, [a, const], [scaled])
    m.op(op.FULLY_CONNECTED, [a, weights, bias], [fc])
    m.op(op.RESHAPE, [total, new_shape], [pairs])
    return m.save(path, [a, b], [total, scaled, fc, pairs])


def make_tflite_single_op(path: Path, *, custom: str | None = None) -> Path:
    """``input`` float32 [1,4] -> ``output``: RELU, or a custom op named ``custom`` (e.g. an Edge TPU
    op that only loads with its delegate)."""
    import tflite

    f32 = tflite.TensorType.FLOAT32
    m = _FlatModel()
    x = m.tensor("input", [1, 4], f32)
    y = m.tensor("output", [1, 4], f32)
    code = tflite.BuiltinOperator.CUSTOM if custom else tflite.BuiltinOperator.RELU
    m.op(code, [x], [y], custom=custom)
    return m.save(path, [x], [y])


def make_tflite_uint8(path: Path) -> Path:
    """input ``x`` uint8 [1,4] (scale 0.5, zero point 128) -> ``doubled`` uint8 = x+x on the same
    scale, ``grid`` uint8 [2,2] = reshape(x), ``real`` float32 = dequantize(x).
    Reference: ``reference_tflite_uint8``."""
    import tflite

    u8, f32, i32 = tflite.TensorType.UINT8, tflite.TensorType.FLOAT32, tflite.TensorType.INT32
    op = tflite.BuiltinOperator
    m = _FlatModel()
    x = m.tensor("x", [1, 4], u8, quant=(TFLITE_Q_SCALE, TFLITE_Q_ZERO))
    new_shape = m.tensor("grid_shape", [2], i32, data=np.array([2, 2], dtype=np.int32))
    doubled = m.tensor("doubled", [1, 4], u8, quant=(TFLITE_Q_SCALE, TFLITE_Q_ZERO))
    grid = m.tensor("grid", [2, 2], u8, quant=(TFLITE_Q_SCALE, TFLITE_Q_ZERO))
    real = m.tensor("real", [1, 4], f32)
    m.op(op.ADD, [x, x], [doubled])
    m.op(op.RESHAPE, [x, new_shape], [grid])
    m.op(op.DEQUANTIZE, [x], [real])
    return m.save(path, [x], [doubled, grid, real])


# --- ONNX with a dynamic batch, several inputs and an int64 scalar -----------------------------


def make_onnx_multi_input(path: Path) -> Path:
    """inputs ``x``, ``y`` float32 [N,3] and ``k`` int64 scalar -> ``mixed`` = x + k*y [N,3],
    ``rowsum`` = sum(x, axis 1) [N], ``next_k`` = k + 1 (int64 scalar). Reference: ``reference_onnx_multi_input``."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["k"], ["k_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "k_float"], ["ky"]),
        helper.make_node("Add", ["x", "ky"], ["mixed"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["rowsum"], keepdims=0),
        helper.make_node("Add", ["k", "one"], ["next_k"]),
    ]
    graph = helper.make_graph(
        nodes, "multi_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("mixed", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("rowsum", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("next_k", TensorProto.INT64, [])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
         numpy_helper.from_array(np.array(1, dtype=np.int64), "one")],
    )
    return _save_onnx(graph, path)


def reference_onnx_multi_input(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {"mixed": (x + np.float32(k) * y).astype(np.float32), "rowsum": x.sum(axis=1).astype(np.float32),
            "next_k": np.array(k + 1, dtype=np.int64)}


# --- TorchScript -------------------------------------------------------------------------------

TORCH_WEIGHT = np.array([[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]], dtype=np.float32)  # [3, 2]


def make_torchscript(path: Path, *, signature: bool = True) -> Path:
    """``x`` float32 [N,3] -> ``proj`` = x @ W [N,2] and ``total`` = sum(x) (scalar), scripted and saved.
    With ``signature`` the file carries edgefleet.json (names, shapes, dtypes). Reference: ``reference_torchscript``."""
    import json

    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.from_numpy(TORCH_WEIGHT.copy()), requires_grad=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x @ self.weight, x.sum()

    scripted = torch.jit.script(Tiny().eval())
    extra = {}
    if signature:
        extra["edgefleet.json"] = json.dumps({
            "inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}],
            "outputs": [{"name": "proj", "shape": [None, 2], "dtype": "float32"},
                        {"name": "total", "shape": [], "dtype": "float32"}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return path


def reference_torchscript(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"proj": (x @ TORCH_WEIGHT).astype(np.float32), "total": np.array(x.sum(), dtype=np.float32)}


# --- broken files ------------------------------------------------------------------------------


def write_truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``source``'s bytes, as a model file cut short in transfer."""
    data = source.read_bytes()
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    return path


def write_jpeg(path: Path, size: int = 32) -> Path:
    """A real JPEG (a gradient image), e.g. renamed ``.onnx`` to check that format comes from content.
    Without OpenCV (32-bit Arm): the first bytes of a JFIF file, enough for a file that is no model."""
    try:
        import cv2
    except ImportError:
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(64))
        return path
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    ok, encoded = cv2.imencode(".jpg", cv2.merge([ramp, ramp.T, 255 - ramp]))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def make_onnx_endless_loop(path: Path, *, trips: int = 10**15) -> Path:
    """input ``x`` float32 [1,4] -> ``y``: x + 1, ``trips`` times over, by an ONNX ``Loop`` (valid, never ends)."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["state_in", "one"], ["state_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "keep_going")])
    return _save_onnx(graph, path)

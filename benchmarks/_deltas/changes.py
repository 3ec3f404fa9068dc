"""The three kinds of model update the delta benchmark measures, made from a real model file.

- ``fine_tune``: every float weight (float32 and float16 tensors) moved by ``relative`` of its value,
  written in place (same layout, as the same exporter would write it).
- ``retrain_last_layer``: the tensors of the last weight-bearing operator replaced by new values of the
  same spread (all their bits change), in place.
- ``int8``: weight-only int8 of a model (ONNX: the project's cpu-int8-static recipe, QDQ; TFLite: int8
  weights with DEQUANTIZE ops, float16 weights converted in place) — applied to the original and to its
  fine-tune, that is a re-quantized int8 model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.server.tensors import TensorSpan, read_layout

FLOATS = ("float32", "float16")


def _rewrite(src: Path, dst: Path, spans: list[TensorSpan], fn) -> list[TensorSpan]:  # type: ignore[no-untyped-def]
    data = bytearray(src.read_bytes())
    for span in spans:
        values = np.frombuffer(bytes(data[span.offset:span.offset + span.length]), span.dtype)
        data[span.offset:span.offset + span.length] = fn(values).astype(span.dtype).tobytes()
    dst.write_bytes(bytes(data))
    return spans


def fine_tune(src: Path, dst: Path, *, relative: float = 1e-3, seed: int = 0) -> list[TensorSpan]:
    rng = np.random.default_rng(seed)
    spans = [t for t in read_layout(src).tensors if t.dtype in FLOATS and t.file == 0]
    return _rewrite(src, dst, spans, lambda v: v.astype(np.float64) * (1 + relative * rng.standard_normal(v.size)))


def retrain_last_layer(src: Path, dst: Path, *, seed: int = 1) -> list[TensorSpan]:
    layout = read_layout(src)
    names = _last_layer_onnx(src) if layout.format == "onnx" else _last_layer_tflite(src)
    spans = [t for t in layout.tensors if t.key in names and t.dtype in FLOATS]
    if not spans:
        raise RuntimeError(f"{src.name}: no last layer found among {sorted(names)}")
    rng = np.random.default_rng(seed)

    def retrained(v: np.ndarray) -> np.ndarray:
        spread = float(np.std(v.astype(np.float64))) or 1.0
        return v.astype(np.float64) + spread * 0.5 * rng.standard_normal(v.size)

    return _rewrite(src, dst, spans, retrained)


def _last_layer_onnx(path: Path) -> set[str]:
    """The constant float inputs of the last node that has a weight (rank ≥ 2), and of an Add right after it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    nodes = list(model.graph.node)
    for index in range(len(nodes) - 1, -1, -1):
        weights = [n for n in nodes[index].input if n in constants and constants[n].ndim >= 2
                   and constants[n].dtype.kind == "f"]
        if weights and nodes[index].op_type != "Constant":
            names = set(weights)
            for later in nodes[index + 1:index + 3]:
                if later.op_type == "Add":
                    names |= {n for n in later.input if n in constants and constants[n].dtype.kind == "f"}
            return names
    return set()


def _last_layer_tflite(path: Path) -> set[str]:
    import tflite

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    producer = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for k in range(op.OutputsLength()):
            producer[op.Outputs(k)] = op

    def constant(index: int) -> int | None:
        """The tensor holding the data behind ``index`` (through a DEQUANTIZE op), if any."""
        if index < 0:
            return None
        tensor = graph.Tensors(index)
        if model.Buffers(tensor.Buffer()).DataLength():
            return index
        op = producer.get(index)
        if op is not None and model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() == tflite.BuiltinOperator.DEQUANTIZE:
            return constant(op.Inputs(0))
        return None

    for i in range(graph.OperatorsLength() - 1, -1, -1):
        op = graph.Operators(i)
        found = [c for c in (constant(op.Inputs(k)) for k in range(op.InputsLength())) if c is not None]
        if any(graph.Tensors(c).ShapeLength() >= 2 for c in found):
            return {f"0:{graph.Tensors(c).Name().decode()}" for c in found}
    return set()


def int8(src: Path, dst: Path, samples: dict[str, np.ndarray]) -> Path:
    if read_layout(src).format == "onnx":
        from edgefleet.server.optimize._onnx_recipes import int8_static

        int8_static(src, dst, samples)
        return dst
    return _tflite_int8(src, dst)


def _tflite_int8(src: Path, dst: Path, min_elements: int = 1024) -> Path:
    """Weight-only int8: float16 constants that feed DEQUANTIZE become int8 in place; float32 constants that feed
    compute ops get an int8 copy and a DEQUANTIZE op in front (per-tensor symmetric scale)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    graph = model.subgraphs[0]
    codes = [c.builtinCode for c in model.operatorCodes]
    if fb.BuiltinOperator.DEQUANTIZE not in codes:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.DEQUANTIZE
        code.version = 2
        model.operatorCodes.append(code)
        codes.append(fb.BuiltinOperator.DEQUANTIZE)
    dequantize = codes.index(fb.BuiltinOperator.DEQUANTIZE)
    feeds_dequantize = {op.inputs[0] for op in graph.operators if op.opcodeIndex == dequantize}
    added = []
    for index, tensor in enumerate(list(graph.tensors)):
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is None or len(data) == 0:
            continue
        if tensor.type == fb.TensorType.FLOAT16 and index in feeds_dequantize:
            values = np.frombuffer(bytes(data), np.float16).astype(np.float32)
            q, scale = _quantize(values)
            tensor.type = fb.TensorType.INT8
            model.buffers[tensor.buffer].data = np.frombuffer(q.tobytes(), np.uint8)
            tensor.quantization = _params(fb, scale)
        elif tensor.type == fb.TensorType.FLOAT32 and index not in feeds_dequantize and tensor.shape is not None \
                and len(tensor.shape) >= 2 and int(np.prod(tensor.shape)) >= min_elements:
            values = np.frombuffer(bytes(data), np.float32)
            q, scale = _quantize(values)
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(q.tobytes(), np.uint8)
            model.buffers.append(buffer)
            copy = fb.TensorT()
            copy.shape, copy.type, copy.buffer = list(tensor.shape), fb.TensorType.INT8, len(model.buffers) - 1
            copy.name = (tensor.name or b"") + b"_int8"
            copy.quantization = _params(fb, scale)
            graph.tensors.append(copy)
            model.buffers[tensor.buffer].data = None  # the float copy goes (no other tensor shares weights here)
            tensor.buffer = 0
            op = fb.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = dequantize, [len(graph.tensors) - 1], [index]
            added.append(op)
    graph.operators = added + list(graph.operators)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def _quantize(values: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(np.max(np.abs(values))) / 127.0 or 1.0
    return np.clip(np.rint(values / scale), -127, 127).astype(np.int8), scale


def _params(fb, scale: float):  # type: ignore[no-untyped-def]
    params = fb.QuantizationParametersT()
    params.scale, params.zeroPoint = [np.float32(scale)], [0]
    return params

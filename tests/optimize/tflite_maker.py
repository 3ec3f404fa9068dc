"""Tiny TFLite files built with the flatbuffers schema (no TensorFlow needed).

``make_relu_tflite``: input [1,4] float32 -> RELU -> output. ``make_edgetpu_like_tflite``: the same
signature through a CUSTOM ``edgetpu-custom-op`` node, as ``edgetpu_compiler`` writes; LiteRT cannot
run it without the Edge TPU delegate.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import tflite


def _ints(builder: flatbuffers.Builder, start: object, values: list[int]) -> int:
    start(builder, len(values))  # type: ignore[operator]
    for v in reversed(values):
        builder.PrependInt32(v)
    return builder.EndVector()


def _tensor(builder: flatbuffers.Builder, name: str, shape: list[int]) -> int:
    name_off = builder.CreateString(name)
    shape_off = _ints(builder, tflite.TensorStartShapeVector, shape)
    tflite.TensorStart(builder)
    tflite.TensorAddShape(builder, shape_off)
    tflite.TensorAddType(builder, tflite.TensorType.FLOAT32)
    tflite.TensorAddBuffer(builder, 0)
    tflite.TensorAddName(builder, name_off)
    return tflite.TensorEnd(builder)


def _vector(builder: flatbuffers.Builder, start: object, offsets: list[int]) -> int:
    start(builder, len(offsets))  # type: ignore[operator]
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _model(path: Path, custom: str | None) -> Path:
    b = flatbuffers.Builder(1024)
    code = tflite.BuiltinOperator.CUSTOM if custom else tflite.BuiltinOperator.RELU
    custom_off = b.CreateString(custom) if custom else None
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
    tflite.OperatorCodeAddBuiltinCode(b, code)
    if custom_off is not None:
        tflite.OperatorCodeAddCustomCode(b, custom_off)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)
    tensors = [_tensor(b, "input", [1, 4]), _tensor(b, "output", [1, 4])]
    op_in, op_out = _ints(b, tflite.OperatorStartInputsVector, [0]), _ints(b, tflite.OperatorStartOutputsVector, [1])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_in)
    tflite.OperatorAddOutputs(b, op_out)
    op = tflite.OperatorEnd(b)
    tensors_vec = _vector(b, tflite.SubGraphStartTensorsVector, tensors)
    ops_vec = _vector(b, tflite.SubGraphStartOperatorsVector, [op])
    sg_in, sg_out = _ints(b, tflite.SubGraphStartInputsVector, [0]), _ints(b, tflite.SubGraphStartOutputsVector, [1])
    name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, sg_in)
    tflite.SubGraphAddOutputs(b, sg_out)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddName(b, name)
    subgraph = tflite.SubGraphEnd(b)
    tflite.BufferStart(b)
    buffer = tflite.BufferEnd(b)
    codes_vec = _vector(b, tflite.ModelStartOperatorCodesVector, [opcode])
    sgs_vec = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    bufs_vec = _vector(b, tflite.ModelStartBuffersVector, [buffer])
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


def make_relu_tflite(path: Path) -> Path:
    return _model(path, None)


def make_edgetpu_like_tflite(path: Path) -> Path:
    return _model(path, "edgetpu-custom-op")

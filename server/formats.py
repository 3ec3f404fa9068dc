"""What an uploaded file is: format from content and its input/output signature.

The runtime layer (``agent.runtime.detect_format`` / ``load_model``) does the work: the
server loads the file with the same code a device will use, so a file the agent cannot load
is refused at upload. When the runtime layer is not importable (a server-only install
without it), ONNX files are still read with the ``onnx`` package.

Loading an uploaded file is running untrusted input: the server calls this only inside a bounded child
process (``server/sandbox_child.py`` task ``inspect``), never on a server thread.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import EdgefleetError, ModelLoadError


class NotAModel(EdgefleetError):
    """The upload is not a model file any runtime here recognises or can load."""


@dataclass(frozen=True)
class ModelInfo:
    format: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def sniff_format(path: Path) -> str | None:
    """Format from the first bytes: TFLite flatbuffer identifier, TorchScript zip, ONNX protobuf."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return None
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return None


def _onnx_info(path: Path) -> ModelInfo:
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError
        raise NotAModel(f"not a valid ONNX model: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "shape": shape, "dtype": dtype, "scale": None, "zero_point": None}

    return ModelInfo("onnx", [spec(v) for v in model.graph.input if v.name not in initializers],
                     [spec(v) for v in model.graph.output])


def inspect_model(path: Path) -> ModelInfo:
    try:
        from edgefleet.agent.runtime import detect_format, load_model  # type: ignore[attr-defined]
    except ImportError:
        fmt = sniff_format(path)
        if fmt == "onnx":
            return _onnx_info(path)
        raise NotAModel("not an ONNX model, and the runtime layer that reads other formats is not installed"
                        ) from None
    try:
        fmt = detect_format(path)
    except ModelLoadError as exc:
        raise NotAModel(str(exc)) from exc
    if fmt is None:
        raise NotAModel("format not recognised from its content (ONNX, TFLite or TorchScript expected)")
    try:
        model = load_model(path)
    except EdgefleetError as exc:
        raise NotAModel(f"a {fmt} file that cannot be loaded: {exc}") from exc
    try:
        inputs = [spec.model_dump(mode="json") for spec in model.inputs]
        outputs = [spec.model_dump(mode="json") for spec in model.outputs]
    finally:
        model.close()
    return ModelInfo(str(fmt), inputs, outputs)

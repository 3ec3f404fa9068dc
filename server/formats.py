"""What an uploaded file is: format from content (agent.runtime.detect_format) and its signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import EdgefleetError, ModelLoadError


class NotAModel(EdgefleetError):
    """The upload is not a model file any runtime here recognises or can load."""


@dataclass(frozen=True)
class ModelInfo:
    format: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def inspect_model(path: Path) -> ModelInfo:
    from agent import runtime

    try:
        fmt = runtime.detect_format(path)
    except ModelLoadError as exc:
        raise NotAModel(str(exc)) from exc
    if fmt is None:
        raise NotAModel("not an ONNX, TFLite or TorchScript model (format not recognised from its content)")
    try:
        model = runtime.load_model(path)
    except EdgefleetError as exc:
        raise NotAModel(f"{fmt} file that cannot be loaded: {exc}") from exc
    try:
        inputs = [spec.model_dump(mode="json") for spec in model.inputs]
        outputs = [spec.model_dump(mode="json") for spec in model.outputs]
    finally:
        model.close()
    return ModelInfo(str(fmt), inputs, outputs)

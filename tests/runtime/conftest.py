from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import make_onnx_multi_input, make_tflite_float, make_tflite_uint8, make_torchscript


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime-models")
    return {
        "tflite_float": make_tflite_float(root / "float.tflite"),
        "tflite_uint8": make_tflite_uint8(root / "uint8.tflite"),
        "onnx": make_onnx_multi_input(root / "multi.onnx"),
        "torchscript": make_torchscript(root / "tiny.pt"),
        "torchscript_bare": make_torchscript(root / "bare.pt", signature=False),
    }

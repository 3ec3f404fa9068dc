from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import have, have_torch
from tests.support.models import make_onnx_multi_input, make_tflite_float, make_tflite_uint8, make_torchscript


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The runtime tests' model files; the ONNX and TorchScript ones only where their packages are installed."""
    root = tmp_path_factory.mktemp("runtime-models")
    files = {
        "tflite_float": make_tflite_float(root / "float.tflite"),
        "tflite_uint8": make_tflite_uint8(root / "uint8.tflite"),
    }
    if have("onnx"):
        files["onnx"] = make_onnx_multi_input(root / "multi.onnx")
    if have_torch():
        files["torchscript"] = make_torchscript(root / "tiny.pt")
        files["torchscript_bare"] = make_torchscript(root / "bare.pt", signature=False)
    return files

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from edgefleet.agent.errors import ModelLoadError
from edgefleet.agent.runtime import detect_format, load_model
from tests.support.models import write_jpeg, write_truncated


@pytest.mark.parametrize(("key", "fmt"), [("tflite_float", "tflite"), ("tflite_uint8", "tflite"),
                                          pytest.param("onnx", "onnx", marks=pytest.mark.onnx),
                                          pytest.param("torchscript", "torchscript", marks=pytest.mark.torch)])
def test_detects_by_content(models: dict[str, Path], tmp_path: Path, key: str, fmt: str) -> None:
    renamed = tmp_path / "model.bin"  # the name says nothing
    renamed.write_bytes(models[key].read_bytes())
    assert detect_format(renamed) == fmt


def test_executorch_identifier(tmp_path: Path) -> None:
    pte = tmp_path / "m.pte"
    pte.write_bytes((16).to_bytes(4, "little") + b"ET12" + bytes(64))
    assert detect_format(pte) == "pte"


@pytest.mark.parametrize("make", ["jpeg", pytest.param("truncated_onnx", marks=pytest.mark.onnx),
                                  "truncated_tflite_header", "missing", "empty", "directory",
                                  "plain_zip", "text"])
def test_bad_files_are_one_line_model_load_errors(models: dict[str, Path], tmp_path: Path, make: str) -> None:
    path = tmp_path / "model.onnx"
    if make == "jpeg":
        write_jpeg(path)
    elif make == "truncated_onnx":
        write_truncated(models["onnx"], path)
    elif make == "truncated_tflite_header":
        path.write_bytes(models["tflite_float"].read_bytes()[:12])
    elif make == "missing":
        path = tmp_path / "absent.onnx"
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "directory":
        path.mkdir()
    elif make == "plain_zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    else:
        path.write_text("name: not a model\n" * 20)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value) or path.name in str(info.value)


@pytest.mark.parametrize(("key", "suffix"), [("tflite_float", ".tflite"),
                                             pytest.param("torchscript", ".pt", marks=pytest.mark.torch)])
def test_truncated_tflite_and_torchscript_fail_to_load(models: dict[str, Path], tmp_path: Path, key: str,
                                                       suffix: str) -> None:
    broken = write_truncated(models[key], tmp_path / f"broken{suffix}", keep=0.6)
    with pytest.raises(ModelLoadError):
        load_model(broken)

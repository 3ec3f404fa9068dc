from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import first_tflite_runtime, have
from tests.support.models import reference_onnx_multi_input, write_jpeg, write_truncated

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edgefleet.agent.cli",
                           *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_probe_json() -> None:
    result = cli("probe", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    tflite = first_tflite_runtime()
    assert doc["auto"]["tflite"] == f"{tflite}/xnnpack" and doc["hw"]["runtimes"][tflite]["available"]
    if have("onnxruntime"):
        assert doc["auto"]["onnx"] == "onnxruntime/CPUExecutionProvider"
    assert len(doc["fingerprint"]) == 16
    if not doc["hw"]["nvidia_gpus"] and not doc["hw"]["jetson"]:  # CUDA libraries alone are no accelerator
        assert not any("CUDA" in name or "GPU" in name for name in doc["accelerators"]), doc["accelerators"]


def test_probe_human_table() -> None:
    result = cli("probe")
    assert result.returncode == 0 and "auto would pick" in result.stdout and first_tflite_runtime() in result.stdout


@pytest.mark.onnx
def test_bench_json_with_input_shapes(models: dict[str, Path]) -> None:
    result = cli("bench", str(models["onnx"]), "--runs", "20", "--warmup", "2", "--threads", "1",
                 "--input-shape", "x=4,3", "--input-shape", "y=4,3", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert (doc["runtime"], doc["delegate"], doc["threads"], doc["runs"]) == (
        "onnxruntime", "CPUExecutionProvider", 1, 20)
    assert doc["inputs"] == {"x": [4, 3], "y": [4, 3], "k": []}
    assert doc["throughput_per_s"] > 0 and doc["peak_rss_mb"] > 10


def test_bench_tflite_human(models: dict[str, Path]) -> None:
    result = cli("bench", str(models["tflite_uint8"]), "--runs", "5", "--delegate", "none")
    assert result.returncode == 0, result.stderr
    assert f"{first_tflite_runtime()} / cpu" in result.stdout and "p99 ms" in result.stdout
    assert result.stderr == ""  # LiteRT's INFO chatter is kept off the terminal


@pytest.mark.onnx
def test_infer_npz_by_name(models: dict[str, Path], tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.ones((2, 3), dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=y, k=np.array(4))
    result = cli("infer", str(models["onnx"]), str(tmp_path / "in.npz"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]
    ref = reference_onnx_multi_input(x, y, 4)
    assert out["mixed"]["data"] == ref["mixed"].tolist() and out["next_k"]["data"] == 5
    assert out["rowsum"] == {"shape": [2], "dtype": "float32", "scale": None, "zero_point": None, "data": [3.0, 12.0]}


def test_infer_npy_quantizes_float(models: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([[0.0, 1.5, -3.0, 60.0]], dtype=np.float32))
    result = cli("infer", str(models["tflite_uint8"]), str(tmp_path / "x.npy"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]
    assert out["grid"]["data"] == [[128, 131], [122, 248]]
    assert out["real"]["data"] == [[0.0, 1.5, -3.0, 60.0]]


@pytest.mark.onnx
def test_infer_image(tmp_path: Path) -> None:
    from tests.support.models import make_onnx_image_classifier, reference_image_classifier

    model = make_onnx_image_classifier(tmp_path / "cls.onnx", size=16)
    image = write_jpeg(tmp_path / "frame.jpg", size=16)
    result = cli("infer", str(model), str(image), "--json")
    assert result.returncode == 0, result.stderr
    scores = np.array(json.loads(result.stdout)["outputs"]["scores"]["data"], dtype=np.float32)
    import cv2

    bgr = cv2.imread(str(image))
    assert bgr is not None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    expected = reference_image_classifier(rgb.transpose(2, 0, 1)[None])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "truncated", "jpeg_as_onnx", "wrong_shape",
                                  *(pytest.param(case, marks=pytest.mark.onnx) for case in (
                                      "npy_for_multi", "missing_input", "bad_shape_flag", "unknown_shape_name")),
                                  "no_args"])
def test_bad_input_one_line_error(models: dict[str, Path], tmp_path: Path, case: str) -> None:
    np.save(tmp_path / "bad.npy", np.ones((1, 5), np.float32))
    if case == "missing":
        assert_one_line_error(cli("bench", str(tmp_path / "absent.tflite")), "no such model file")
    elif case == "truncated":
        broken = write_truncated(models["tflite_float"], tmp_path / "cut.tflite", keep=0.7)
        assert_one_line_error(cli("infer", str(broken), str(tmp_path / "bad.npy")), "cut.tflite")
    elif case == "jpeg_as_onnx":
        fake = write_jpeg(tmp_path / "model.onnx")
        assert_one_line_error(cli("bench", str(fake), "--json"), "not a model file")
    elif case == "wrong_shape":
        assert_one_line_error(cli("infer", str(models["tflite_uint8"]), str(tmp_path / "bad.npy")),
                              "input 'x': expected shape [1,4], got [1,5]")
    elif case == "npy_for_multi":
        assert_one_line_error(cli("infer", str(models["onnx"]), str(tmp_path / "bad.npy")), "use a .npz")
    elif case == "missing_input":
        assert_one_line_error(cli("infer", str(models["onnx"]), str(tmp_path / "none.npz")), "no such input file")
    elif case == "bad_shape_flag":
        assert_one_line_error(cli("bench", str(models["onnx"]), "--input-shape", "x=a,b"), "NAME=D0,D1")
    elif case == "unknown_shape_name":
        assert_one_line_error(cli("bench", str(models["onnx"]), "--input-shape", "zz=1,3"), "zz")
    else:
        assert_one_line_error(cli("bench"), "required")

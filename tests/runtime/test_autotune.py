from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.config import RuntimeSection
from edgefleet.agent.runtime import load_model, load_model_for_config
from tests.support.models import reference_tflite_float


def test_autotune_times_candidates_then_hits_cache(models: dict[str, Path], tmp_path: Path) -> None:
    first = load_model(models["tflite_float"], autotune=True, cache_dir=tmp_path)
    timed = [c for c in first.selection if c["latency_ms"] is not None]  # type: ignore[attr-defined]
    assert {c["delegate"] for c in timed} == {"xnnpack", "cpu"}
    chosen = [c for c in first.selection if c["status"] == "chosen"]  # type: ignore[attr-defined]
    assert len(chosen) == 1 and chosen[0]["latency_ms"] == min(c["latency_ms"] for c in timed)
    (cache,) = (tmp_path / "autotune").glob("*.json")
    record = json.loads(cache.read_text())
    assert (record["runtime"], record["delegate"], record["threads"]) == (
        first.runtime, chosen[0]["delegate"], first.threads)

    second = load_model(models["tflite_float"], autotune=True, cache_dir=tmp_path)
    hit = [c for c in second.selection if c["status"] == "chosen"]  # type: ignore[attr-defined]
    assert hit[0]["reason"].startswith("autotune cache hit")
    assert all(c["latency_ms"] is None for c in second.selection if c["status"] != "chosen")  # type: ignore[attr-defined]
    assert (second.delegate, second.threads) == (first.delegate, first.threads)
    a = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(second.infer({"a": a, "b": a})["fc"], reference_tflite_float(a, a)["fc"])


@pytest.mark.onnx
def test_corrupt_cache_retunes(models: dict[str, Path], tmp_path: Path) -> None:
    load_model(models["onnx"], autotune=True, cache_dir=tmp_path)
    (cache,) = (tmp_path / "autotune").glob("*.json")
    cache.write_text("{not json")
    model = load_model(models["onnx"], autotune=True, cache_dir=tmp_path)
    assert any(c["reason"].startswith("fastest of") for c in model.selection)  # type: ignore[attr-defined]
    assert json.loads(cache.read_text())["delegate"] == "CPUExecutionProvider"


def test_different_model_different_cache_entry(models: dict[str, Path], tmp_path: Path) -> None:
    load_model(models["tflite_float"], autotune=True, cache_dir=tmp_path)
    load_model(models["tflite_uint8"], autotune=True, cache_dir=tmp_path)
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 2


def test_load_model_for_config(models: dict[str, Path], tmp_path: Path) -> None:
    section = RuntimeSection(delegate="none", threads=1, autotune=False)
    model = load_model_for_config(models["tflite_float"], section, tmp_path)
    assert (model.delegate, model.threads) == ("cpu", 1)
    assert not (tmp_path / "autotune").exists()

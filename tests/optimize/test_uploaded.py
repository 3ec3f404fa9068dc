"""Ready-made uploads (TFLite, Edge TPU-compiled) validated like server-made variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.server.optimize import OptimizeError, build_variants, validate_uploaded_variant
from tests.support.models import make_tflite_single_op


def test_a_tflite_upload_that_runs_is_validated_against_its_reference(tmp_path: Path) -> None:
    ref = make_tflite_single_op(tmp_path / "ref.tflite")
    up = make_tflite_single_op(tmp_path / "up.tflite")
    samples = {"input": np.array([[[-1, 2, -3, 4]], [[5, -6, 7, -8]]], np.float32).reshape(2, 1, 4)[:, 0]}
    res = validate_uploaded_variant(ref, up, name="cpu-upload", samples=samples)
    assert (res.name, res.status, res.format) == ("cpu-upload", "ready", "tflite")
    assert res.report["validated"] is True and res.report["validation"]["runtime"] == "litert"
    assert res.report["validation"]["outputs"]["output"] == {"cosine": 1.0, "max_abs_error": 0.0,
                                                             "max_rel_abs_error": 0.0}
    assert res.report["samples"] == {"kind": "operator", "rows": 2}


def test_an_edgetpu_compiled_upload_cannot_run_here_and_policy_decides(tmp_path: Path) -> None:
    ref = make_tflite_single_op(tmp_path / "ref.tflite")
    tpu = make_tflite_single_op(tmp_path / "model_edgetpu.tflite", custom="edgetpu-custom-op")
    rejected = validate_uploaded_variant(ref, tpu, name="edgetpu")
    assert rejected.status == "rejected" and rejected.report["edgetpu_compiled"] is True
    assert rejected.report["reason"] == "cannot validate on this server: needs the Edge TPU delegate"
    assert "edgetpu-custom-op" in rejected.report["notes"][0]
    accepted = validate_uploaded_variant(ref, tpu, name="edgetpu", unverifiable="accept")
    assert accepted.status == "ready" and accepted.report["validated"] is False
    with pytest.raises(OptimizeError, match="unknown policy"):
        validate_uploaded_variant(ref, tpu, unverifiable="maybe")


def test_a_wrong_upload_is_rejected(tmp_path: Path) -> None:
    ref = make_tflite_single_op(tmp_path / "ref.tflite")
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(ref.read_bytes()[:40])
    res = validate_uploaded_variant(ref, broken)
    assert res.status == "rejected" and res.report["reason"].startswith("validation failed: does not load")


def test_edgetpu_target_without_the_compiler_says_how_to_get_one(tmp_path: Path) -> None:
    ref = make_tflite_single_op(tmp_path / "ref.tflite")
    [res] = build_variants(ref, "tflite", "edgetpu", tmp_path / "out", None)
    assert res.status == "rejected" and res.path is None
    assert "edgetpu_compiler is not installed" in res.report["reason"]
    assert "upload" in res.report["reason"]

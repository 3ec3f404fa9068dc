"""The demo's ``--v2 slower`` model (same scores, the model computed twice) and how a rollout's end is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.server.demo import EXIT_CODES, build_parser, outcome
from edgefleet.server.demo.models import INPUT_SIZE, make_classifier


def scores(path: Path, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["scores"], {"image": image})[0])


def conv_macs(path: Path) -> int:
    """Multiply-accumulates of the model's Conv nodes on one 64x64 image (its arithmetic, nearly all of it)."""
    model = onnx.load(str(path))
    weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_c, in_c, kh, kw = weights[node.input[1]]
            stride = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])[0]
            side = INPUT_SIZE // stride
            total += out_c * in_c * kh * kw * side * side
    return total


def test_the_slower_v2_gives_the_same_scores_for_twice_the_arithmetic(tmp_path: Path) -> None:
    same = make_classifier(tmp_path / "same.onnx", 2)
    slower = make_classifier(tmp_path / "slower.onnx", 2, compute=2)
    images = np.random.default_rng(3).random((4, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    np.testing.assert_allclose(scores(slower, images), scores(same, images), rtol=1e-6, atol=1e-7)
    assert conv_macs(slower) == 2 * conv_macs(same)
    # a v2 like v1, but for the fine-tuned head: what --v2 same rolls out
    assert not np.allclose(scores(make_classifier(tmp_path / "v1.onnx", 1), images), scores(same, images))


def test_the_copy_cannot_be_merged_with_the_model_by_an_optimizer(tmp_path: Path) -> None:
    """No two Conv nodes of the slower model share weight values: common-subexpression passes keep both."""
    model = onnx.load(str(make_classifier(tmp_path / "slower.onnx", 2, compute=2)))
    values = {w.name: onnx.numpy_helper.to_array(w) for w in model.graph.initializer}
    conv_weights = [values[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    assert len(conv_weights) == 4
    for i, a in enumerate(conv_weights):
        for b in conv_weights[i + 1:]:
            assert a.shape != b.shape or not np.array_equal(a, b)


def test_compute_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compute"):
        make_classifier(tmp_path / "m.onnx", 2, compute=0)


def test_outcome_names_a_rollback_before_the_pause_it_causes() -> None:
    rollout = {"state": "paused", "reason": "wave 1: failure ratio 1/1 = 1.00 above 0.34",
               "devices": [{"device_id": "cam-01", "state": "rolled_back", "reason": "latency is above x5.00"},
                           {"device_id": "cam-02", "state": "pending", "reason": None}]}
    assert outcome(rollout) == {"outcome": "rolled_back", "reason": rollout["reason"],
                                "rolled_back": {"cam-01": "latency is above x5.00"}}
    paused = {"state": "paused", "reason": "wave 1: p95 latency x2.10 ...", "devices": [
        {"device_id": "cam-01", "state": "committed", "reason": None}]}
    assert outcome(paused)["outcome"] == "paused" and outcome(paused)["reason"] == paused["reason"]
    assert outcome({"state": "completed", "devices": []})["outcome"] == "completed"
    assert outcome({"state": "running", "devices": []})["outcome"] == "unfinished: running"
    assert EXIT_CODES == {"completed": 0, "paused": 2, "rolled_back": 3}


def test_v2_flag() -> None:
    assert build_parser().parse_args([]).v2 == "same"
    assert build_parser().parse_args(["--v2", "slower"]).v2 == "slower"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--v2", "faster"])


def test_slower_model_writes_the_copies_it_timed(tmp_path: Path) -> None:
    from edgefleet.server.demo.slowdown import slower_model

    # a factor no copy count reaches: the most copies allowed, whatever this machine's timing
    slowdown = slower_model(tmp_path / "v2.onnx", 2, factor=float("inf"), max_compute=3)
    assert slowdown.compute == 3 and slowdown.path == tmp_path / "v2.onnx"
    assert slowdown.ratio > 0 and slowdown.median_ms > 0 and slowdown.v1_median_ms > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2.onnx"]  # the timing copy of v1 is gone
    images = np.random.default_rng(5).random((2, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    same = make_classifier(tmp_path / "same.onnx", 2)
    np.testing.assert_allclose(scores(slowdown.path, images), scores(same, images), rtol=1e-6, atol=1e-7)
    assert conv_macs(slowdown.path) == 3 * conv_macs(tmp_path / "same.onnx")
    assert "computed 3 times" in slowdown.text()

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.quality import (
    AgreementTracker,
    BoxLayout,
    LatencyBuckets,
    agreement,
    cosine_agreement,
    detection_agreement,
    iou_matrix,
    match_boxes,
    top1_agreement,
)


def test_iou_matrix_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], dtype=np.float32)
    expected = np.array([[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])
    assert iou_matrix(a, b) == pytest.approx(expected)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
    assert iou_matrix(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]])).tolist() == [[0.0]]  # no area


def test_greedy_matching_takes_the_best_pair_first() -> None:
    serving = np.array([[0, 0, 10, 10], [0, 0, 10, 12]])
    candidate = np.array([[0, 0, 10, 11]])
    pairs = match_boxes(serving, candidate)
    # IoU(#0, c) = 100/110 = 0.909, IoU(#1, c) = 110/120 = 0.917: the candidate goes to #1
    assert [(i, j) for i, j, _ in pairs] == [(1, 0)]
    assert pairs[0][2] == pytest.approx(110 / 120)
    # classes must match
    assert match_boxes(serving, candidate, a_classes=np.array([1, 2]), b_classes=np.array([1]))[0][:2] == (0, 0)
    # below the IoU bar: no match
    assert match_boxes(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]])) == []
    assert len(match_boxes(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]), iou=0.3)) == 1


def test_detection_agreement_f1() -> None:
    layout = BoxLayout(score_threshold=0.5)
    serving = {"boxes": np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]]], dtype=np.float32),
               "scores": np.array([[0.9, 0.8, 0.7]]), "classes": np.array([[1, 2, 3]])}
    candidate = {"boxes": np.array([[[1, 1, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [70, 70, 80, 80]]]),
                 "scores": np.array([[0.9, 0.8, 0.6, 0.2]]),  # the last is below the threshold
                 "classes": np.array([[1, 2, 4, 1]])}  # the third has the wrong class
    result = detection_agreement(serving, candidate, layout)
    assert result["matched"] == 2 and result["serving"] == 3 and result["candidate"] == 3
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert agreement(serving, candidate, "detection", layout=layout) == pytest.approx(2 / 3)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    assert detection_agreement(empty, empty)["f1"] == 1.0
    assert detection_agreement(serving, empty, layout)["f1"] == 0.0
    with pytest.raises(ValueError, match="no 'boxes'"):
        detection_agreement({"scores": np.zeros(1)}, empty)


def test_top1_and_cosine() -> None:
    a = {"scores": np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])}
    b = {"scores": np.array([[0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])}
    assert top1_agreement(a, b) == pytest.approx(2 / 3)
    assert agreement(a, a, "classification") == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        top1_agreement(a, {"scores": np.zeros((1, 2))})
    assert cosine_agreement({"e": np.array([1.0, 0.0])}, {"e": np.array([1.0, 1.0])}) == pytest.approx(2 ** -0.5)
    assert cosine_agreement({"e": np.array([1.0, 0.0])}, {"e": np.array([-1.0, 0.0])}) == 0.0
    assert agreement({"e": np.zeros(3)}, {"e": np.zeros(3)}, "other") == 1.0
    with pytest.raises(ValueError, match="no output in common"):
        cosine_agreement({"a": np.zeros(1)}, {"b": np.zeros(1)})


def test_latency_buckets_and_tracker() -> None:
    buckets = LatencyBuckets()
    for ms in range(1, 101):
        buckets.add(float(ms))
    summary = buckets.summary()
    assert summary["p50"] == pytest.approx(50, rel=0.05) and summary["p95"] == pytest.approx(95, rel=0.05)
    assert summary["max"] == 100.0
    assert LatencyBuckets().summary() == {"p50": None, "p95": None, "p99": None, "max": None}
    tracker = AgreementTracker()
    for value in (1.0, 1.0, 0.0, 0.6):
        tracker.add(value, 2.0)
    tracker.add_error()
    report = tracker.report()
    assert report["samples"] == 4 and report["errors"] == 1
    assert report["agreement"] == pytest.approx(0.65) and report["agreed_ratio"] == 0.75
    assert report["agreement_min"] == 0.0 and report["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.05)

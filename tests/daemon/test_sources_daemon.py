"""The daemon as a subprocess on a generated video file and on a folder of images, with a real ONNX model."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.daemon.support import (
    LABELS,
    AgentProc,
    base_config,
    expected_scores,
    pattern,
    read_results,
    solid,
    write_video,
)
from tests.support.models import make_onnx_image_classifier
from tests.support.net import wait_until


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_onnx_image_classifier(tmp_path / "classifier.onnx")


def _matches(record: dict, candidates: list[np.ndarray]) -> int | None:
    scores = np.asarray(record["outputs"]["scores"][0])
    for index, expected in enumerate(candidates):
        if np.allclose(scores, expected, rtol=1e-5, atol=1e-6):
            return index
    return None


def test_video_file_results_then_deleted_and_restored(tmp_path: Path, model: Path) -> None:
    video = tmp_path / "clip.avi"
    first = write_video(video, [solid((40 * i, 255 - 40 * i, 90)) for i in range(6)])
    expected_first = [expected_scores(frame) for frame in first]
    results = tmp_path / "results.jsonl"
    config = base_config(tmp_path, model, source={"kind": "video", "uri": str(video), "fps": 40,
                                                   "reconnect_max_s": 0.5},
                         results={"file": str(results)}, api={"listen": None})
    agent = AgentProc(tmp_path, config).start()
    try:
        wait_until(lambda: len(read_results(results)) >= 15, timeout=20)
        records = read_results(results)
        for record in records:
            assert record["model"]["name"] == "classifier" and record["model"]["version"] == 3
            assert record["source"] == str(video)
            index = _matches(record, expected_first)
            assert index is not None, record
            best = int(np.argmax(expected_first[index]))
            assert record["top_k"][0] == {"index": best, "label": LABELS[best],
                                          "score": pytest.approx(float(expected_first[index][best]), rel=1e-5)}
        assert {_matches(r, expected_first) for r in records} == set(range(6))  # the file loops

        video.unlink()  # the stream goes away: reopened with backoff, the daemon survives
        wait_until(lambda: "source video failed" in agent.log(), timeout=10)
        assert agent.proc is not None and agent.proc.poll() is None
        seen = len(read_results(results))
        second = write_video(tmp_path / "new.avi", [pattern(seed) for seed in range(3)])
        shutil.move(tmp_path / "new.avi", video)
        expected_second = [expected_scores(frame) for frame in second]
        wait_until(lambda: any(_matches(r, expected_second) is not None for r in read_results(results)[seen:]),
                   timeout=15)
        code, took = agent.terminate()
        assert code == 0 and took < 5.0
    finally:
        agent.kill()


def _write_png(folder: Path, name: str, image: np.ndarray) -> None:
    tmp = folder / f".{name}.part"
    assert cv2.imwrite(str(tmp) + ".png", image)
    Path(str(tmp) + ".png").rename(folder / name)


def test_image_folder_new_files_once_each_and_folder_recreated(tmp_path: Path, model: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    images = {f"img{seed}.png": pattern(seed) for seed in range(6)}
    for name in list(images)[:3]:
        _write_png(folder, name, images[name])
    (folder / "broken.png").write_bytes(b"not an image at all")
    results = tmp_path / "results.jsonl"
    config = base_config(tmp_path, model, source={"kind": "images", "uri": str(folder), "fps": 50,
                                                   "reconnect_max_s": 0.5},
                         results={"file": str(results)}, api={"listen": None})
    agent = AgentProc(tmp_path, config).start()

    def by_source() -> Counter[str]:
        return Counter(r["source"] for r in read_results(results))

    try:
        wait_until(lambda: len(by_source()) >= 3, timeout=15)
        for name in list(images)[3:5]:  # arrive while the daemon runs
            _write_png(folder, name, images[name])
        wait_until(lambda: len(by_source()) >= 5, timeout=15)
        shutil.rmtree(folder)  # the folder goes away and comes back
        wait_until(lambda: "image folder" in agent.log() and "source images failed" in agent.log(), timeout=10)
        folder.mkdir()
        _write_png(folder, "img5.png", images["img5.png"])
        wait_until(lambda: len(by_source()) >= 6, timeout=15)
        assert "skipping" in agent.log() and "broken.png" in agent.log()
        counts = by_source()
        assert counts == Counter({name: 1 for name in images})  # each processed exactly once
        for record in read_results(results):
            expected = expected_scores(images[record["source"]])
            np.testing.assert_allclose(record["outputs"]["scores"][0], expected, rtol=1e-5, atol=1e-6)
        code, took = agent.terminate()
        assert code == 0 and took < 5.0
    finally:
        agent.kill()

    # after a restart the folder's files are remembered: nothing is processed twice
    _write_png(folder, "late.png", pattern(99))
    again = AgentProc(tmp_path, config).start()
    try:
        wait_until(lambda: "late.png" in by_source(), timeout=15)
        assert by_source()["img5.png"] == 1 and by_source()["late.png"] == 1
        assert again.terminate()[0] == 0
    finally:
        again.kill()

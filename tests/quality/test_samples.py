from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.quality import SampleStore, accuracy_by
from tests.quality.conftest import Infer
from tests.quality.support import scenes, to_tensor

LABELS = ["cat", "dog", "bird", "fish"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_and_bounded_by_count(tmp_path: Path, serving: Infer) -> None:
    clock = Clock()
    store = SampleStore(tmp_path / "s", max_count=5, per_hour=60, clock=clock, labels=LABELS)
    frames = list(scenes(seed=1, count=20))
    kept = [store.maybe_store(f, serving(to_tensor(f)), model="cls", version=3, task="classification")
            for f in frames[:3]]
    assert kept[0] is not None and kept[1:] == [None, None]  # 60/h: one now, then one a minute
    assert store.rate_limited == 2
    ids = [kept[0]]
    for frame in frames[3:12]:
        clock.now += 60.0
        sample_id = store.maybe_store(frame, serving(to_tensor(frame)), model="cls", version=3,
                                      task="classification", device_class="rpi4")
        assert sample_id is not None
        ids.append(sample_id)
    assert store.ids() == ids[-5:]  # the five newest; the oldest were dropped
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        [f"{i}.jpg" for i in ids[-5:]] + [f"{i}.json" for i in ids[-5:]])
    record = store.record(ids[-1])
    expected = serving(to_tensor(frames[11]))["scores"][0]
    assert record["prediction"]["class"] == int(np.argmax(expected))
    assert record["prediction"]["label"] == LABELS[int(np.argmax(expected))]
    assert record["prediction"]["score"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert record["model"] == {"name": "cls", "version": 3} and record["device_class"] == "rpi4"
    assert record["shape"] == [96, 128]
    image = store.image(ids[-1])
    assert image.shape == (96, 128, 3)  # already under max_side: kept at its size
    assert np.abs(image.astype(int) - frames[11].astype(int)).mean() < 8  # JPEG, close to the frame
    # a restart finds the same samples
    assert SampleStore(tmp_path / "s", max_count=5, clock=clock).ids() == ids[-5:]
    with pytest.raises(KeyError, match="no sample"):
        store.record("nope")


def test_downscaled_grayscale_and_bounded_by_bytes(tmp_path: Path) -> None:
    clock = Clock()
    store = SampleStore(tmp_path, max_side=64, grayscale=True, max_bytes=3_000, per_hour=3600, clock=clock)
    rng = np.random.default_rng(0)
    for _ in range(12):
        clock.now += 1.0
        noisy = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        assert store.maybe_store(noisy, {"e": np.zeros(3)}, model="emb", version=1) is not None
    assert 0 < len(store) < 12
    assert store.size_bytes <= 3_000
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == store.size_bytes
    image = store.image(store.ids()[0])
    assert image.shape == (48, 64)  # 640x480 -> longest side 64, one channel
    assert store.record(store.ids()[0])["prediction"] is None
    assert store.delete(store.ids()[0]) is True and store.delete("nope") is False


def test_bad_settings_and_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_count >= 1"):
        SampleStore(tmp_path, max_count=0)
    store = SampleStore(tmp_path)
    with pytest.raises(ValueError, match="expected an image"):
        store.maybe_store(np.zeros((3,), np.uint8), {}, model=None, version=None)


def test_accuracy_by_version_and_device_class() -> None:
    def sample(i: str, version: int, device_class: str, cls: int) -> dict[str, Any]:
        return {"id": i, "model": {"name": "cls", "version": version}, "device_class": device_class,
                "prediction": {"class": cls, "label": LABELS[cls], "score": 0.9}}

    samples: list[dict[str, Any]] = [sample("a", 1, "rpi4", 0), sample("b", 1, "rpi4", 1), sample("c", 1, "jetson", 2),
               sample("d", 2, "rpi4", 3), sample("e", 2, "jetson", 3), sample("f", 2, "jetson", 0),
               {"id": "g", "model": {"name": "cls", "version": 2}, "device_class": "rpi4", "prediction": None}]
    labels = {"a": 0, "b": "cat", "c": "2", "d": "fish", "e": 3, "g": 1}  # f is not labelled
    result = accuracy_by(labels, samples)
    assert result["overall"] == {"n": 5, "correct": 4, "accuracy": 0.8}
    assert result["by_version"] == {"cls@1": {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3, abs=1e-6)},
                                    "cls@2": {"n": 2, "correct": 2, "accuracy": 1.0}}
    assert result["by_device_class"] == {"rpi4": {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3, abs=1e-6)},
                                         "jetson": {"n": 2, "correct": 2, "accuracy": 1.0}}
    assert result["by_version_and_device_class"]["cls@1/rpi4"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert result["unlabeled"] == 1 and result["no_prediction"] == 1
    json.dumps(result)

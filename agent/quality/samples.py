"""A small on-disk ring of input samples for ground truth (off unless the operator turns it on).

Each sample is ``<id>.jpg`` (the frame downscaled to ``max_side``, optionally grayscale) and
``<id>.json`` (id, time, model name/version, device class and the served prediction). The store
keeps at most ``max_count`` samples and ``max_bytes`` bytes, dropping the oldest, and takes at
most ``per_hour`` samples an hour (token bucket). Nothing here uploads anything: the daemon
lists or exports samples only when asked. Ids sort by time; an operator labels samples by id
and ``accuracy_by`` turns (labels, sample records) into accuracy per model version and device class.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.opencv import load_cv2
from edgefleet.agent.quality.stats import classifier_stats, to_builtin


class SampleStore:
    def __init__(self, directory: Path | str, *, max_count: int = 200, max_bytes: int = 8 * 1024 * 1024,
                 per_hour: float = 60.0, max_side: int = 160, jpeg_quality: int = 80, grayscale: bool = False,
                 labels: list[str] | None = None, clock: Any = time.time) -> None:
        if max_count < 1 or max_bytes < 1 or per_hour <= 0 or max_side < 8 or not 1 <= jpeg_quality <= 100:
            raise ValueError("sample store needs max_count >= 1, max_bytes >= 1, per_hour > 0, max_side >= 8 "
                             "and 1 <= jpeg_quality <= 100")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_count, self.max_bytes, self.per_hour = max_count, max_bytes, per_hour
        self.max_side, self.jpeg_quality, self.grayscale = max_side, jpeg_quality, grayscale
        self.labels = labels
        self._clock = clock
        self._lock = threading.Lock()
        self._burst = max(1.0, per_hour / 60.0)  # at most a minute's worth at once
        self._tokens = self._burst
        self._refilled = clock()
        self.rate_limited = 0
        self._index: dict[str, int] = {}  # id -> bytes on disk, oldest first
        for meta in sorted(self.directory.glob("*.json")):
            image = meta.with_suffix(".jpg")
            if image.exists():
                self._index[meta.stem] = meta.stat().st_size + image.stat().st_size
            else:
                meta.unlink(missing_ok=True)
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        self._evict()

    @property
    def size_bytes(self) -> int:
        return sum(self._index.values())

    def ids(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def maybe_store(self, frame: np.ndarray, outputs: Mapping[str, np.ndarray], *, model: str | None,
                    version: int | None, task: str = "other", device_class: str | None = None) -> str | None:
        """Keep this frame if the rate allows; its id, or None when rate-limited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.per_hour / 3600.0)
            self._refilled = now
            if self._tokens < 1.0:
                self.rate_limited += 1
                return None
            self._tokens -= 1.0
        cv2 = load_cv2("storing samples")
        image = self._shrink(cv2, frame)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError(f"could not encode a frame of shape {list(frame.shape)} as JPEG")
        sample_id = f"{int(now * 1000):013d}-{secrets.token_hex(4)}"
        record: dict[str, Any] = {"id": sample_id, "ts": now, "model": {"name": model, "version": version},
                                  "device_class": device_class, "task": task,
                                  "shape": list(frame.shape[:2]), "prediction": self._prediction(outputs, task)}
        meta = json.dumps(to_builtin(record), sort_keys=True).encode()
        with self._lock:
            self._write(self.directory / f"{sample_id}.jpg", jpeg.tobytes())
            self._write(self.directory / f"{sample_id}.json", meta)
            self._index[sample_id] = len(meta) + len(jpeg)
            self._evict()
        return sample_id

    def _shrink(self, cv2: Any, frame: np.ndarray) -> np.ndarray:
        if frame.ndim not in (2, 3) or frame.size == 0:
            raise ValueError(f"expected an image (H, W[, C]), got shape {list(frame.shape)}")
        if frame.dtype != np.uint8:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
        h, w = frame.shape[:2]
        ratio = self.max_side / max(h, w)
        if ratio < 1.0:
            frame = cv2.resize(frame, (max(1, round(w * ratio)), max(1, round(h * ratio))),
                               interpolation=cv2.INTER_AREA)
        if self.grayscale and frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return frame

    def _prediction(self, outputs: Mapping[str, np.ndarray], task: str) -> dict[str, Any] | None:
        if task != "classification":
            return None
        pair = classifier_stats(outputs)
        if pair is None:
            return None
        label = self.labels[pair[0]] if self.labels and pair[0] < len(self.labels) else None
        return {"class": pair[0], "label": label, "score": round(pair[1], 6)}

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def _evict(self) -> None:
        while self._index and (len(self._index) > self.max_count or self.size_bytes > self.max_bytes):
            oldest = next(iter(self._index))
            self._remove(oldest)

    def _remove(self, sample_id: str) -> None:
        self._index.pop(sample_id, None)
        for suffix in (".jpg", ".json"):
            (self.directory / f"{sample_id}{suffix}").unlink(missing_ok=True)

    def delete(self, sample_id: str) -> bool:
        with self._lock:
            known = sample_id in self._index
            self._remove(sample_id)
            return known

    def record(self, sample_id: str) -> dict[str, Any]:
        if sample_id not in self._index:
            raise KeyError(f"no sample {sample_id!r}")
        return dict(json.loads((self.directory / f"{sample_id}.json").read_text()))

    def records(self) -> list[dict[str, Any]]:
        return [self.record(i) for i in list(self._index)]

    def image(self, sample_id: str) -> np.ndarray:
        if sample_id not in self._index:
            raise KeyError(f"no sample {sample_id!r}")
        data = np.frombuffer((self.directory / f"{sample_id}.jpg").read_bytes(), dtype=np.uint8)
        cv2 = load_cv2("reading samples")
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"sample {sample_id!r} has an unreadable image")
        return np.asarray(image)


def _matches(label: Any, prediction: Mapping[str, Any]) -> bool:
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        return prediction.get("label") == label
    return prediction.get("class") == int(label)


def accuracy_by(labels: Mapping[str, Any], samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of the served predictions against operator labels (class index or label name),
    overall, per model version (``name@version``), per device class and per both. Samples without
    a label or a prediction are counted in ``unlabeled`` / ``no_prediction``."""
    def bump(table: dict[str, dict[str, Any]], key: str, correct: bool) -> None:
        entry = table.setdefault(key, {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(correct)

    overall: dict[str, dict[str, Any]] = {}
    by_version: dict[str, dict[str, Any]] = {}
    by_class: dict[str, dict[str, Any]] = {}
    by_both: dict[str, dict[str, Any]] = {}
    unlabeled = no_prediction = 0
    for sample in samples:
        label = labels.get(str(sample.get("id")))
        if label is None:
            unlabeled += 1
            continue
        prediction = sample.get("prediction")
        if not prediction:
            no_prediction += 1
            continue
        correct = _matches(label, prediction)
        model = sample.get("model") or {}
        version = f"{model.get('name')}@{model.get('version')}"
        device_class = str(sample.get("device_class"))
        bump(overall, "all", correct)
        bump(by_version, version, correct)
        bump(by_class, device_class, correct)
        bump(by_both, f"{version}/{device_class}", correct)
    for table in (overall, by_version, by_class, by_both):
        for entry in table.values():
            entry["accuracy"] = round(entry["correct"] / entry["n"], 6)
    return {"overall": overall.get("all", {"n": 0, "correct": 0, "accuracy": None}), "by_version": by_version,
            "by_device_class": by_class, "by_version_and_device_class": by_both, "unlabeled": unlabeled,
            "no_prediction": no_prediction}

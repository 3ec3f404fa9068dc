"""Generated camera-like images and a real ONNX classifier run through onnxruntime."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np

from tests.support.models import make_onnx_image_classifier

SIZE = 32


def scene(rng: np.random.Generator, height: int = 96, width: int = 128) -> np.ndarray:
    """A BGR uint8 frame: a random colour cast, a gradient, a few blobs and sensor noise."""
    base = rng.uniform(50, 200, 3)
    ramp = np.linspace(-30, 30, width)[None, :, None] * rng.uniform(-1, 1)
    image = np.broadcast_to(base, (height, width, 3)) + ramp
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        canvas = np.ascontiguousarray(image, dtype=np.float64)
        cv2.circle(canvas, centre, int(rng.integers(5, 30)), colour, -1)
        image = canvas
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def scenes(seed: int, count: int, darken: float = 1.0) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        frame = scene(rng)
        if darken != 1.0:
            frame = np.clip(frame.astype(np.float32) * darken, 0, 255).astype(np.uint8)
        yield frame


def to_tensor(frame: np.ndarray) -> dict[str, np.ndarray]:
    """The daemon's default pre-processing for this model: stretch to 32x32, RGB, /255, NCHW."""
    rgb = cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE)), cv2.COLOR_BGR2RGB)
    return {"image": np.ascontiguousarray((rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])}


def classifier(tmp: Path, seed: int = 0, classes: int = 4,
               threads: int = 1) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    import onnxruntime as ort

    path = make_onnx_image_classifier(tmp / f"cls-{seed}-{classes}.onnx", size=SIZE, classes=classes, seed=seed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def infer(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"scores": session.run(["scores"], dict(feeds))[0]}

    return infer

"""Calibration inputs for the benchmark's real models (made here: no data set is downloaded).

ppocr-rec: text lines rendered with OpenCV (random words, fonts, scales), PaddleOCR's normalisation
((x/255 - 0.5) / 0.5, NCHW, 48 px high). The MediaPipe models: smooth random images (blurred noise, a
few dark ellipses) in [0, 1], NHWC, at the model's input size.
"""

from __future__ import annotations

import string

import numpy as np


def text_lines(rows: int, seed: int = 0, width: int = 320) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]
    out = np.empty((rows, 3, 48, width), np.float32)
    alphabet = string.ascii_letters + string.digits
    for i in range(rows):
        canvas = np.full((48, width, 3), int(rng.integers(200, 256)), np.uint8)
        word = "".join(rng.choice(list(alphabet), int(rng.integers(4, 12))))
        cv2.putText(canvas, word, (int(rng.integers(2, 20)), 34), fonts[i % len(fonts)], float(rng.uniform(0.8, 1.1)),
                    tuple(int(c) for c in rng.integers(0, 80, 3)), 2, cv2.LINE_AA)
        out[i] = ((canvas.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def smooth_images(rows: int, size: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((rows, size, size, 3), np.float32)
    for i in range(rows):
        noise = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.uint8)
        image = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (int(rng.integers(size // 10, size // 3)), int(rng.integers(size // 10, size // 3)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                        tuple(int(c) for c in rng.integers(0, 60, 3)), -1)
        out[i] = cv2.GaussianBlur(image, (5, 5), 0).astype(np.float32) / 255.0
    return out

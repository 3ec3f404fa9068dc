"""A frame as a small grayscale image, the input of the drift statistics.

Two ways to the same pixels: OpenCV when the process has already imported it (a device that
reads frames has: it is ~5x faster), else numpy steps that follow OpenCV's arithmetic — nearest
point-sampling of big frames, area averaging rounded to uint8, BT.601 luma in OpenCV's fixed
point — so the update server, which never imports OpenCV, gets the figures a device gets for the
same image (equal up to a rounding step on a few pixels; ``tests/quality`` compares the two).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

WORK_SIZE = 48  # the small image is at most this many pixels a side (never upscaled)
SAMPLE_SIZE = WORK_SIZE * 2  # frames bigger than 4 * WORK_SIZE are point-sampled to this first
_LUMA_SHIFT = 14
_LUMA_BGR = np.array([1868, 9617, 4899], dtype=np.int64)  # OpenCV's B, G, R to Y weights << 14


def _opencv() -> Any | None:
    return sys.modules.get("cv2")  # only when already imported: this module never pulls it in


@functools.lru_cache(maxsize=64)
def _area_weights(out: int, size: int) -> np.ndarray:
    """(out, size): each output cell the average of the input cells it covers, by covered area."""
    edges = np.arange(out + 1, dtype=np.float64) * (size / out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(size, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    weights.flags.writeable = False
    return weights


def _nearest(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST: source index floor(i * size / out)."""
    h, w = frame.shape[:2]
    rows = np.minimum(np.floor(np.arange(height) * (h / height)).astype(np.intp), h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (w / width)).astype(np.intp), w - 1)
    return frame[rows][:, cols]


def _area(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_AREA down-scaling of a uint8 image, rounded back to uint8."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    if h % height == 0 and w % width == 0:  # whole blocks: OpenCV sums in integers
        ky, kx = h // height, w // width
        blocks = frame.reshape(height, ky, width, kx, *frame.shape[2:]).astype(np.int64).sum(axis=(1, 3))
        if ky == kx == 2:
            return ((blocks + 2) >> 2).astype(np.uint8)  # its 2x2 fast path rounds half up
        return np.rint(blocks / (ky * kx)).astype(np.uint8)
    values = frame.astype(np.float64)
    rows, cols = _area_weights(height, h), _area_weights(width, w)
    out = np.einsum("ih,hw...,jw->ij...", rows, values, cols)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _luma(image: np.ndarray) -> np.ndarray:
    """BGR(A) uint8 to Y as OpenCV's BGR2GRAY: (1868 B + 9617 G + 4899 R + 2^13) >> 14."""
    weighted = image[:, :, :3].astype(np.int64) @ _LUMA_BGR
    return ((weighted + (1 << (_LUMA_SHIFT - 1))) >> _LUMA_SHIFT).astype(np.uint8)


def small_gray(frame: np.ndarray, *, use_opencv: bool | None = None) -> np.ndarray:
    """The frame (H, W[, 1|3|4], any dtype clipped to 0..255) as gray uint8, at most WORK_SIZE a side."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or frame.size == 0 or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise ValueError(f"expected an image (H, W[, 1|3|4]), got shape {list(frame.shape)}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    cv2 = _opencv() if use_opencv is not False else None
    if use_opencv and cv2 is None:
        raise RuntimeError("OpenCV is not imported in this process")
    h, w = frame.shape[:2]
    if min(h, w) > WORK_SIZE * 4:  # the cost stays flat up to 4K
        frame = (cv2.resize(frame, (SAMPLE_SIZE, SAMPLE_SIZE), interpolation=cv2.INTER_NEAREST) if cv2
                 else _nearest(frame, SAMPLE_SIZE, SAMPLE_SIZE))
        h = w = SAMPLE_SIZE
    height, width = min(WORK_SIZE, h), min(WORK_SIZE, w)
    if cv2 is not None:
        small = frame if (h, w) == (height, width) else cv2.resize(frame, (width, height),
                                                                   interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGRA2GRAY if small.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        return np.asarray(small)
    small = _area(frame, height, width)
    return small if small.ndim == 2 else _luma(small)


def laplacian(gray: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian (OpenCV's ksize=1) with mirrored borders (BORDER_REFLECT_101), float32."""
    p = np.pad(gray.astype(np.float32), 1, mode="reflect")
    return np.asarray(p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * p[1:-1, 1:-1])


def luma_stats(frame: np.ndarray, *, use_opencv: bool | None = None) -> tuple[float, float, float]:
    """(mean, standard deviation, variance of the Laplacian) of ``small_gray(frame)``, on the 0..255 scale."""
    gray = small_gray(frame, use_opencv=use_opencv)
    cv2 = _opencv() if use_opencv is not False else None
    if cv2 is not None:  # the same figures (the Laplacian of integers is exact in float32), 5x sooner
        mean, std = cv2.meanStdDev(gray)
        _lap_mean, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F, ksize=1))
        return float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2
    return float(gray.mean()), float(gray.std()), float(laplacian(gray).var(dtype=np.float64))

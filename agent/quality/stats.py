"""Cheap per-frame statistics and bounded-memory windowed histograms.

Input statistics are computed on a small grayscale copy of the frame (at most ``WORK_SIZE`` a
side, area-averaged: ``smallgray``), so their cost does not grow with the camera's resolution
and a frame seen on the device and the same image seen by the server (as a model-input tensor)
give the same figures. Output statistics are the top-1 class and score of a classifier, or a strided
sample of each output's values otherwise.

No OpenCV import here: the server profiles calibration tensors with the same code.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from edgefleet.agent.quality.smallgray import luma_stats

MAX_VALUES_PER_OUTPUT = 256  # values of one output that go into its histogram per frame
INPUT_STATS = ("brightness", "contrast", "blur", "aspect", "pixels")
SIZE_STATS = ("aspect", "pixels")  # meaningless on model-input tensors (already resized)


def input_stats(frame: np.ndarray) -> dict[str, float]:
    """brightness = mean luma, contrast = luma std (both 0..1), blur = log10(1e-6 + variance of the
    Laplacian of luma in 0..1) (sharper is higher), aspect = w/h, pixels = log2(h*w)."""
    h, w = frame.shape[:2]
    mean, std, lap_var = luma_stats(frame)
    return {
        "brightness": mean / 255.0,
        "contrast": std / 255.0,
        "blur": math.log10(1e-6 + lap_var / (255.0 * 255.0)),
        "aspect": w / h,
        "pixels": math.log2(h * w),
    }


def _as_probabilities(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64, copy=False)
    if row.min() >= 0.0 and abs(row.sum() - 1.0) < 1e-3:
        return row
    exp = np.exp(row - row.max())
    return np.asarray(exp / exp.sum())


def classifier_row(outputs: Mapping[str, np.ndarray], name: str | None = None) -> np.ndarray | None:
    """The first sample's class scores: the named output, else the first with more than one value."""
    if name is not None:
        value = outputs.get(name)
        candidates = [] if value is None else [value]
    else:
        candidates = list(outputs.values())
    for value in candidates:
        array = np.asarray(value)
        if array.size > 1 and array.dtype.kind in "fiu":
            return array.reshape(-1, array.shape[-1])[0] if array.ndim >= 1 else None
    return None


def classifier_stats(outputs: Mapping[str, np.ndarray], name: str | None = None) -> tuple[int, float] | None:
    """(top-1 class, its probability); scores that are not probabilities are soft-maxed first."""
    row = classifier_row(outputs, name)
    if row is None:
        return None
    top = int(np.argmax(row))
    return top, float(_as_probabilities(row)[top])


def output_values(array: np.ndarray, limit: int = MAX_VALUES_PER_OUTPUT) -> np.ndarray:
    """At most ``limit`` values of an output, evenly strided, as float64."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > limit:
        flat = flat[:: -(-flat.size // limit)]
    return flat.astype(np.float64, copy=False)


def tensor_to_frames(batch: np.ndarray, *, layout: str = "auto", color: str = "RGB",
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     scale: float | None = None) -> Iterator[np.ndarray]:
    """Model-input images (batch axis first) back to BGR/gray uint8 frames, undoing
    ``tensor = (pixel * scale - mean) / std`` (the daemon's pre-processing; ``scale`` defaults to
    1/255 for float tensors and 1 for integer ones). Lets the server profile calibration tensors."""
    array = np.asarray(batch)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"expected image tensors [N, C, H, W] or [N, H, W, C], got shape {list(array.shape)}")
    if layout == "auto":
        layout = "NCHW" if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3) else "NHWC"
    if layout == "NCHW":
        array = array.transpose(0, 2, 3, 1)
    if scale is None:
        scale = 1.0 / 255.0 if array.dtype.kind == "f" else 1.0
    values = array.astype(np.float32)
    if std is not None:
        values = values * np.asarray(std, dtype=np.float32)
    if mean is not None:
        values = values + np.asarray(mean, dtype=np.float32)
    pixels = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
    for image in pixels:
        if image.shape[2] == 3 and color == "RGB":
            yield np.ascontiguousarray(image[:, :, ::-1])
        else:
            yield image if image.shape[2] == 3 else image[:, :, 0]


class WindowedHistogram:
    """Counts per bin over roughly the last ``window`` observations, in O(bins * blocks) memory.

    The window is a ring of ``blocks`` blocks; when the newest block is full the oldest is
    dropped, so the counts always cover between ``window * (blocks-1)/blocks`` and ``window``
    observations. An observation may spread a total weight of 1 over several bins.
    """

    def __init__(self, bins: int, window: int, blocks: int = 4) -> None:
        if bins < 1 or window < blocks or blocks < 2:
            raise ValueError(f"need bins >= 1 and window >= blocks >= 2, got bins={bins} window={window} "
                             f"blocks={blocks}")
        self.bins = bins
        self.block_size = window // blocks
        self._blocks = np.zeros((blocks, bins))
        self._block_n = [0] * blocks
        self._total = np.zeros(bins)
        self._n = 0
        self._cur = 0

    @property
    def n(self) -> int:
        """Observations in the window."""
        return self._n

    def counts(self) -> np.ndarray:
        return self._total.copy()

    def add(self, index: int) -> None:
        self._blocks[self._cur, index] += 1.0
        self._total[index] += 1.0
        self._advance()

    def add_spread(self, indices: np.ndarray) -> None:
        """One observation whose weight is split evenly over ``indices`` (one entry per value)."""
        if indices.size == 0:
            return
        weights = np.bincount(indices, minlength=self.bins)[: self.bins] / indices.size
        self._blocks[self._cur] += weights
        self._total += weights
        self._advance()

    def _advance(self) -> None:
        self._n += 1
        self._block_n[self._cur] += 1
        if self._block_n[self._cur] >= self.block_size:
            self._cur = (self._cur + 1) % len(self._block_n)
            self._n -= self._block_n[self._cur]
            self._block_n[self._cur] = 0
            self._blocks[self._cur] = 0.0
            self._total = self._blocks.sum(axis=0)  # also sheds float round-off


def chi2_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty: within ~1 % for
    dof >= 2 at the tails used here); no SciPy on the device."""
    if dof < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"need dof >= 1 and 0 < p < 1, got dof={dof} p={p}")
    if dof == 1:
        return float(NormalDist().inv_cdf((1.0 + p) / 2.0) ** 2)  # the square of a standard normal
    z = NormalDist().inv_cdf(p)
    h = 2.0 / (9.0 * dof)
    return float(dof * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3)


def psi_critical(bins: int, live_n: int, reference_n: int, alpha: float) -> float:
    """The PSI a window of ``live_n`` observations exceeds with probability ``alpha`` when it comes from the
    reference's distribution (``reference_n`` samples): PSI / (1/n + 1/m) is asymptotically chi-square with
    ``bins - 1`` degrees of freedom. ``inf`` for an empty window."""
    if live_n <= 0:
        return math.inf
    spread = 1.0 / live_n + (1.0 / reference_n if reference_n > 0 else 0.0)
    return chi2_quantile(1.0 - alpha, max(1, bins - 1)) * spread


def bin_index(edges: Sequence[float], value: float) -> int:
    """Bin of ``value`` given sorted interior edges: ``len(edges) + 1`` bins, outer ones open."""
    return bisect_right(edges, value)


def to_builtin(value: Any) -> Any:
    """numpy scalars/arrays inside dicts and lists to plain JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

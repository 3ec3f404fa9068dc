"""Frames to input tensors, and output tensors to results, precomputed once per model.

``Preprocessor`` turns a BGR (or gray) uint8 frame into the feed of the model's image input
following a ``PreprocessSpec``; every per-pixel step is folded into one multiply-add per
channel (scale, mean/std and quantization together), so the hot path is resize, colour
conversion, one fused affine, a cast and (for NCHW) a transpose.

OpenCV is imported when the first ``Preprocessor`` is built (a model fed with frames or images),
not with this module: a device that takes JSON inputs only runs without it.

Default spec when the model carries none: RGB, stretch; a uint8/int8 input takes raw
0..255 values, a float input takes values scaled by 1/255.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.opencv import load_cv2
from edgefleet.agent.wire import ModelMeta, PreprocessSpec, TensorSpec

LETTERBOX_FILL = 114
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767), "uint16": (0, 65535)}


def image_input(inputs: Sequence[TensorSpec], name: str | None = None) -> TensorSpec:
    """The input that takes the image: ``name``, else the first 4-D input, else the first 3-D one."""
    if name is not None:
        for spec in inputs:
            if spec.name == name:
                return spec
        raise InvalidInputError(f"preprocess.input '{name}' is not an input of the model")
    for rank in (4, 3):
        for spec in inputs:
            if len(spec.shape) == rank:
                return spec
    raise InvalidInputError("the model has no image-shaped (3-D or 4-D) input")


def detect_layout(shape: Sequence[int | None]) -> str:
    """NCHW when the axis after the batch has 1 or 3 values and the last one does not, else NHWC."""
    dims = list(shape[-3:])
    first, last = dims[0], dims[-1]
    if first in (1, 3) and last not in (1, 3):
        return "NCHW"
    return "NHWC"


class Preprocessor:
    def __init__(self, inputs: Sequence[TensorSpec], spec: PreprocessSpec | None = None) -> None:
        self._cv2 = cv2 = load_cv2("feeding frames or images to a model")
        self.spec = spec or PreprocessSpec()
        target = image_input(inputs, self.spec.input)
        self.input = target
        self.name = target.name
        self.batched = len(target.shape) == 4
        self.layout = self.spec.layout if self.spec.layout != "auto" else detect_layout(target.shape)
        dims = list(target.shape[-3:])
        if self.layout == "NCHW":
            channels, self.height, self.width = dims
        else:
            self.height, self.width, channels = dims
        self.channels = channels or (1 if self.spec.color == "GRAY" else 3)
        if self.channels not in (1, 3):
            raise InvalidInputError(f"input '{self.name}' has {self.channels} channels; images have 1 or 3")
        self.color = "GRAY" if self.channels == 1 else ("RGB" if self.spec.color == "GRAY" else self.spec.color)
        self.dtype = np.dtype(self.spec.dtype or target.dtype)
        self._affine = self._fold_affine(target)
        self._fill = LETTERBOX_FILL
        self._blob = self._blob_params(cv2)

    def _fold_affine(self, target: TensorSpec) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (a, b) with tensor = pixel * a + b, or None for a plain cast."""
        spec = self.spec
        integer_out = self.dtype.kind in "iu"
        float_steps = spec.scale is not None or spec.mean is not None or spec.std is not None
        if not float_steps and integer_out:
            return None  # raw 0..255 into an integer input
        scale = spec.scale if spec.scale is not None else (1.0 / 255.0 if not integer_out or target.quantized else 1.0)
        mean = np.asarray(spec.mean if spec.mean is not None else [0.0], dtype=np.float64)
        std = np.asarray(spec.std if spec.std is not None else [1.0], dtype=np.float64)
        for label, values in (("mean", mean), ("std", std)):
            if values.size not in (1, self.channels):
                raise InvalidInputError(f"preprocess.{label} has {values.size} values for {self.channels} channels")
        if np.any(std == 0):
            raise InvalidInputError("preprocess.std must not contain 0")
        a = np.broadcast_to(scale / std, (self.channels,)).astype(np.float64)
        b = np.broadcast_to(-mean / std, (self.channels,)).astype(np.float64)
        if integer_out and target.quantized and target.scale:
            zero = target.zero_point or 0
            a, b = a / target.scale, b / target.scale + zero
        return a.astype(np.float32), b.astype(np.float32)

    def _blob_params(self, cv2: Any) -> Any:
        """OpenCV's one-call resize + swap + affine + layout for the common float case, else None."""
        if (self._affine is None or self.dtype != np.float32 or self.channels != 3 or not self.batched
                or self.height is None or self.width is None or self.spec.resize not in ("stretch", "none")
                or not hasattr(cv2.dnn, "blobFromImageWithParams")):
            return None
        a, b = self._affine
        if np.any(a == 0):
            return None
        layout = cv2.DNN_LAYOUT_NCHW if self.layout == "NCHW" else cv2.DNN_LAYOUT_NHWC
        return cv2.dnn.Image2BlobParams(scalefactor=tuple(float(v) for v in a), size=(self.width, self.height),
                                        mean=tuple(float(v) for v in -b / a), swapRB=self.color == "RGB",
                                        ddepth=cv2.CV_32F, datalayout=layout)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        height, width = self.height, self.width
        if height is None or width is None or self.spec.resize == "none":
            return image
        src_h, src_w = image.shape[:2]
        if (src_h, src_w) == (height, width):
            return image
        mode = self.spec.resize
        if mode == "stretch":
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if mode == "letterbox":
            ratio = min(width / src_w, height / src_h)
            new_w, new_h = max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
            resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            top, left = (height - new_h) // 2, (width - new_w) // 2
            return cv2.copyMakeBorder(resized, top, height - new_h - top, left, width - new_w - left,
                                      cv2.BORDER_CONSTANT, value=(self._fill,) * 3)
        ratio = max(width / src_w, height / src_h)  # center_crop: cover, then cut the middle
        new_w, new_h = max(width, round(src_w * ratio)), max(height, round(src_h * ratio))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[top:top + height, left:left + width]

    def _convert(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if image.ndim == 2 or image.shape[2] == 1:
            gray = image.reshape(image.shape[:2])
            if self.color == "GRAY":
                return gray
            return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR if self.color == "BGR" else cv2.COLOR_GRAY2RGB)
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if self.color == "GRAY":
            return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if self.color == "RGB" else image

    def tensor(self, frame: np.ndarray) -> np.ndarray:
        """One BGR/gray uint8 frame (H, W[, C]) to the input tensor."""
        if frame.ndim not in (2, 3) or frame.size == 0:
            raise InvalidInputError(f"expected an image (H, W[, C]), got shape {list(frame.shape)}")
        if self._blob is not None and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 \
                and (self.spec.resize == "stretch" or frame.shape[:2] == (self.height, self.width)):
            return self._cv2.dnn.blobFromImageWithParams(frame, self._blob)
        image = self._convert(self._resize(frame))
        if image.ndim == 2:
            image = image[:, :, None]
        if self._affine is None:
            tensor = image if image.dtype == self.dtype else image.astype(self.dtype)
        else:
            a, b = self._affine
            scaled = image.astype(np.float32)
            scaled *= a
            scaled += b
            if self.dtype.kind in "iu":
                low, high = _INT_RANGES.get(self.dtype.name, (None, None))
                np.rint(scaled, out=scaled)
                if low is not None:
                    np.clip(scaled, low, high, out=scaled)
            tensor = scaled if scaled.dtype == self.dtype else scaled.astype(self.dtype)
        if self.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        if self.batched:
            tensor = tensor[None]
        return np.ascontiguousarray(tensor)

    def __call__(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return {self.name: self.tensor(frame)}


def dequantize(array: np.ndarray, spec: TensorSpec | None) -> np.ndarray:
    if spec is not None and spec.quantized and spec.scale:
        return (array.astype(np.float32) - (spec.zero_point or 0)) * spec.scale
    return array


class Postprocessor:
    """Outputs by name as lists; for classifiers also the top-k classes with labels."""

    def __init__(self, meta: ModelMeta, outputs: Sequence[TensorSpec], k: int = 5) -> None:
        self.meta = meta
        self.k = k
        self.specs = {spec.name: spec for spec in outputs}
        self.classifier = meta.task == "classification" and bool(outputs)
        self.scores_name = outputs[0].name if outputs else None
        self.labels = list(meta.labels or [])

    def top_k(self, outputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        name = self.scores_name
        if not self.classifier or name is None or name not in outputs:
            return []
        scores = dequantize(np.asarray(outputs[name]), self.specs.get(name))
        row = (scores[0] if scores.ndim >= 2 else scores).reshape(-1)  # first item of the batch
        if row.size == 0:
            return []
        k = min(self.k, row.size)
        idx = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        idx = idx[np.argsort(-row[idx], kind="stable")]
        return [{"index": int(i), "label": self.labels[i] if i < len(self.labels) else str(int(i)),
                 "score": float(row[i])} for i in idx]

    @staticmethod
    def as_lists(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {name: np.asarray(value).tolist() for name, value in outputs.items()}

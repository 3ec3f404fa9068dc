"""An image file or frame to a model input tensor (the CLI's ``infer IMAGE``; the daemon may reuse it).

Stretch-resize to the input's H and W, BGR -> RGB (or gray for 1 channel), then: a uint8/int8 input
takes the raw 0..255 values (int8 shifted by -128), a float input takes values scaled to 0..1.
Layout (NHWC / NCHW) follows the input's shape: channels (1 or 3) right after the batch axis is NCHW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.opencv import load_cv2
from edgefleet.agent.wire import TensorSpec


def _layout(spec: TensorSpec) -> tuple[str, int | None, int | None, int]:
    dims = list(spec.shape[-3:])
    if len(dims) != 3:
        raise InvalidInputError(f"input '{spec.name}' {spec.shape} is not image-shaped (3-D or 4-D)")
    if dims[0] in (1, 3) and dims[2] not in (1, 3):
        return "NCHW", dims[1], dims[2], int(dims[0])
    return "NHWC", dims[0], dims[1], int(dims[2] or 3)


def image_to_tensor(image: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A BGR (or gray) uint8 frame -> the tensor ``spec`` takes, batch axis included for 4-D inputs."""
    cv2 = load_cv2("an image input")

    layout, height, width, channels = _layout(spec)
    h, w = image.shape[:2]
    frame = cv2.resize(image, (width or w, height or h), interpolation=cv2.INTER_LINEAR)
    if channels == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[..., None] if frame.ndim == 3 else frame[..., None]
    else:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB) if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if spec.dtype == "uint8":
        tensor = frame
    elif spec.dtype == "int8":
        tensor = (frame.astype(np.int16) - 128).astype(np.int8)
    else:
        tensor = frame.astype(np.float32) * np.float32(1.0 / 255.0)
        tensor = tensor.astype(spec.dtype)
    if layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    if len(spec.shape) == 4:
        tensor = tensor[None]
    return np.ascontiguousarray(tensor)


def read_image(path: Path) -> np.ndarray:
    cv2 = load_cv2(f"reading the image {path.name}")

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidInputError(f"{path}: not a readable image")
    return image

"""Example inputs that match a model's signature, for warm-up, autotune and ``bench``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.wire import TensorSpec


def resolve_shape(spec: TensorSpec, override: Sequence[int] | None = None) -> tuple[int, ...]:
    """The concrete shape to feed: ``override`` (checked against the fixed dims), else dynamic dims as 1."""
    if override is None:
        return tuple(1 if d is None else d for d in spec.shape)
    if spec.shape and (len(override) != len(spec.shape)
                       or any(d is not None and d != o for d, o in zip(spec.shape, override, strict=True))):
        fixed = "[" + ",".join("?" if d is None else str(d) for d in spec.shape) + "]"
        raise InvalidInputError(f"input '{spec.name}': shape {list(override)} does not fit {fixed}")
    return tuple(override)


def example_feeds(specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    shapes = shapes or {}
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise InvalidInputError(f"--input-shape names unknown input(s) {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = resolve_shape(spec, shapes.get(spec.name))
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif np.issubdtype(dtype, np.integer) and spec.quantized:
            info = np.iinfo(dtype)
            feeds[spec.name] = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        elif dtype.kind in "iu" and not shape:
            feeds[spec.name] = np.ones(shape, dtype=dtype)  # an integer scalar (a rate, a count): 1, not 0
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds

"""Calibration inputs (an operator's ``.npz``) checked against a model's inputs.

One rule set for both places that take them: ``model push --calibration`` (refused there with one
422 line, so a bad file never waits for ``optimize`` to fail) and the variant pipeline. Arrays are
keyed by input name with the sample axis first; the rest of each array's shape must fit the input's
fixed dims, and its dtype must convert to the input's without changing kind (float64 -> float32 is
fine, float -> uint8 is not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Signature = Sequence[tuple[str, Sequence[int | None], str]]  # (name, shape with None for dynamic dims, dtype)


class CalibrationError(ValueError):
    """Calibration arrays that cannot feed the model; the message is one line naming the input."""


def signature(inputs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int | None], str]]:
    """The (name, shape, dtype) rows of a model's inputs as the registry stores them (dicts)."""
    return [(str(i["name"]), [d if isinstance(d, int) and d >= 0 else None for d in i.get("shape") or []],
             str(i["dtype"])) for i in inputs]


def _dims(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_calibration(samples: Mapping[str, Any], inputs: Signature) -> dict[str, np.ndarray]:
    """The arrays cast to the inputs' dtypes, in input order; :class:`CalibrationError` when they do not fit."""
    if not samples:
        raise CalibrationError("calibration data is empty")
    arrays = {str(k): np.asarray(v) for k, v in samples.items()}
    names = [name for name, _shape, _dtype in inputs]
    if names and sorted(arrays) != sorted(names):
        raise CalibrationError(f"calibration inputs {sorted(arrays)} do not match the model's inputs {sorted(names)}")
    counts = {len(v) for v in arrays.values() if v.ndim}
    if len(counts) != 1:
        raise CalibrationError(f"calibration arrays disagree on the sample count: {sorted(counts)}")
    for name, shape, dtype in inputs:
        value = arrays[name]
        if value.ndim != len(shape):
            raise CalibrationError(f"calibration input {name!r} has rank {value.ndim}, the model wants "
                                   f"{len(shape)} ({_dims(shape)}, sample axis first)")
        for axis, (want, got) in enumerate(zip(shape, value.shape, strict=True)):
            if axis and want is not None and want != got:
                raise CalibrationError(f"calibration input {name!r} has shape {list(value.shape)}, the model wants "
                                       f"{_dims(shape)} (dim {axis} must be {want})")
        target = np.dtype(dtype)
        if not np.can_cast(value.dtype, target, casting="same_kind"):
            raise CalibrationError(f"calibration input {name!r} is {value.dtype.name}, the model takes {target.name}")
        arrays[name] = value.astype(target, copy=False)
    return {n: arrays[n] for n in names} if names else arrays

"""What every backend shares: input validation and quantization, precomputed at load time.

``InputBinder`` holds, per input, everything the hot path needs (name, dtype, static shape or the
fixed axes of a dynamic one, quantization parameters), so ``check`` is a few comparisons per
input when the caller gets it right; the slow, descriptive path runs only to raise an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.wire import TensorSpec

_INT_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767), "uint16": (0, 65535),
}


def first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


def default_threads() -> int:
    """``threads: 0`` means one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """real -> q = round(real / scale + zero_point), clipped to the integer type's range."""
    assert spec.scale is not None
    low, high = _INT_RANGES[spec.dtype]
    q = np.rint(values / spec.scale + (spec.zero_point or 0))
    return np.clip(q, low, high).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    assert spec.scale is not None
    return ((values.astype(np.float32) - np.float32(spec.zero_point or 0)) * np.float32(spec.scale))


class _Slot:
    __slots__ = ("dtype", "fixed", "name", "quantized", "rank", "spec", "static")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.rank = len(spec.shape)
        self.static: tuple[int, ...] | None = (
            tuple(int(d) for d in spec.shape if d is not None) if None not in spec.shape else None)
        self.fixed = tuple((axis, int(d)) for axis, d in enumerate(spec.shape) if d is not None)
        self.quantized = spec.quantized


class InputBinder:
    """Validates a feed dict against the inputs and returns the arrays in input order."""

    def __init__(self, specs: Sequence[TensorSpec], *, check_shapes: bool = True) -> None:
        self.specs = list(specs)
        self._slots = [_Slot(s) for s in self.specs]
        self._names = frozenset(s.name for s in self.specs)
        self._check_shapes = check_shapes

    def check(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        if len(feeds) != len(self._slots):
            self._raise_names(feeds)
        arrays: list[np.ndarray] = []
        for slot in self._slots:
            try:
                value = feeds[slot.name]
            except KeyError:
                self._raise_names(feeds)
            if type(value) is not np.ndarray:
                value = np.asarray(value)
            if value.dtype != slot.dtype:
                value = self._convert(slot, value)
            if self._check_shapes:
                shape = value.shape
                if slot.static is not None:
                    if shape != slot.static:
                        self._raise_shape(slot, shape)
                elif len(shape) != slot.rank or any(shape[a] != d for a, d in slot.fixed):
                    self._raise_shape(slot, shape)
            arrays.append(value)
        return arrays

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Like ``check`` but returns a name -> array dict: the caller's own dict when nothing was converted."""
        arrays = self.check(feeds)
        if type(feeds) is dict and all(a is feeds[s.name] for a, s in zip(arrays, self.specs, strict=True)):
            return feeds
        return {s.name: a for s, a in zip(self.specs, arrays, strict=True)}

    @staticmethod
    def _convert(slot: _Slot, value: np.ndarray) -> np.ndarray:
        if slot.quantized and np.issubdtype(value.dtype, np.floating):
            return quantize(value, slot.spec)
        if np.can_cast(value.dtype, slot.dtype, "same_kind") and value.dtype.kind != "b":
            return value.astype(slot.dtype)
        hint = " (float data needs a quantized input)" if np.issubdtype(value.dtype, np.floating) else ""
        raise InvalidInputError(
            f"input '{slot.name}': expected dtype {slot.dtype.name}, got {value.dtype.name}{hint}")

    def _raise_names(self, feeds: Mapping[str, Any]) -> NoReturn:
        given = set(feeds)
        missing = sorted(self._names - given)
        unknown = sorted(given - self._names)
        parts = []
        if missing:
            parts.append("missing input " + ", ".join(f"'{n}'" for n in missing))
        if unknown:
            parts.append("unknown input " + ", ".join(f"'{n}'" for n in unknown))
        expected = ", ".join(f"'{s.name}' {shape_text(s.shape)} {s.dtype}" for s in self.specs)
        raise InvalidInputError("; ".join(parts) + f" (the model takes {expected})")

    @staticmethod
    def _raise_shape(slot: _Slot, shape: tuple[int, ...]) -> NoReturn:
        raise InvalidInputError(
            f"input '{slot.name}': expected shape {shape_text(slot.spec.shape)}, got {shape_text(list(shape))}")

"""The one model interface every backend implements.

A backend module exposes ``load(path, options) -> Model``. ``Model.infer`` takes a
mapping of input name to array and returns output name to array; ``inputs`` and
``outputs`` describe the signature (dynamic dims as None, dtype, quantization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgefleet.agent.wire import TensorSpec


@dataclass(frozen=True)
class LoadOptions:
    """What to load a model with. ``delegate``/``provider`` name one concrete choice, never "auto"."""

    threads: int = 0
    delegate: str | None = None  # tflite: None (plain CPU kernels) | xnnpack | edgetpu | <external name>
    delegate_library: str | None = None  # external delegate: shared library path
    delegate_options: Mapping[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] = ()  # onnxruntime: providers in order, CPU last
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dequantize: bool = False  # return quantized outputs as float32 (default: raw; the spec has scale/zero point)


@runtime_checkable
class Model(Protocol):
    path: Path
    runtime: str  # litert | tflite_runtime | tensorflow | onnxruntime | torch | executorch
    delegate: str  # what really runs it: xnnpack, edgetpu, CPUExecutionProvider, cpu, ...
    threads: int

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Signature:
    """The read-only ``inputs``/``outputs`` of a backend, set once at load as ``_inputs``/``_outputs``."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

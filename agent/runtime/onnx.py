"""ONNX Runtime backend.

``LoadOptions.providers`` is the provider list handed to the session, most wanted first, CPU last.
ONNX Runtime drops a provider that fails to initialise and quietly runs on the next one, so after
the session is built ``session.get_providers()`` is read back: when the first provider asked for is
not among them the load raises ``RuntimeUnavailable`` (the selector then falls back), and
``delegate`` always names the provider that really runs the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelError, ModelLoadError, RuntimeUnavailable
from edgefleet.agent.runtime._common import InputBinder, default_threads, first_line
from edgefleet.agent.runtime.base import LoadOptions, Signature
from edgefleet.agent.wire import TensorSpec

# Preference order (DESIGN.md "Runtime layer").
RANKED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)
ALIASES = {name.removesuffix("ExecutionProvider").lower(): name for name in RANKED_PROVIDERS}
ALIASES["trt"] = "TensorrtExecutionProvider"

_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(bool)": "bool", "tensor(string)": "object",
}


def provider_name(name: str) -> str | None:
    """``cuda`` / ``CUDA`` / ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``; None if not a provider."""
    if name.endswith("ExecutionProvider"):
        return name
    return ALIASES.get(name.lower())


def _spec(arg: Any) -> TensorSpec:
    return TensorSpec(name=arg.name, shape=[d if isinstance(d, int) and d >= 0 else None for d in arg.shape],
                      dtype=_DTYPES.get(arg.type, "float32"))


class OnnxModel(Signature):
    runtime = "onnxruntime"

    def __init__(self, path: Path, options: LoadOptions) -> None:
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise RuntimeUnavailable(f"onnxruntime does not import: {first_line(exc)}") from exc
        self.path = path
        self.threads = options.threads or default_threads()
        providers = list(options.providers) or ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 4  # fatal only: failures reach the caller as exceptions
        provider_args = [(p, {k: str(v) for k, v in options.provider_options.get(p, {}).items()})
                         for p in providers]
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
            message = first_line(exc)
            if "provider" in message.lower():
                raise RuntimeUnavailable(f"{providers[0]} failed: {message}") from exc
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {message}") from exc
        running = session.get_providers()
        if providers[0] not in running:
            raise RuntimeUnavailable(
                f"{providers[0]} was asked for but the session runs on {', '.join(running)} "
                "(onnxruntime fell back)")
        self.delegate = running[0]
        self.providers = running
        self._session = session
        self._inputs = [_spec(i) for i in session.get_inputs()]
        self._outputs = [_spec(o) for o in session.get_outputs()]
        self._binder = InputBinder(self._inputs)
        self._in_names = [s.name for s in self._inputs]
        self._out_names = [s.name for s in self._outputs]
        self._run = session.run

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = self._binder.check_feeds(feeds)
        try:
            results = self._run(self._out_names, checked)
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(f"{self.path.name}: inference failed: {first_line(exc)}") from exc
        return dict(zip(self._out_names, results, strict=True))

    def close(self) -> None:
        self._session = None
        self._run = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions) -> OnnxModel:
    return OnnxModel(Path(path), options)

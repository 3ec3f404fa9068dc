"""LiteRT / TFLite backend: ``ai_edge_litert`` first, then ``tflite_runtime``, then ``tensorflow.lite``.

Delegates (``LoadOptions.delegate``):

- ``None`` / ``"none"`` / ``"cpu"``: the built-in kernels only. LiteRT applies XNNPACK by default, so
  this asks for ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``.
- ``"xnnpack"``: the default op resolver, which applies the XNNPACK delegate. Whether XNNPACK really
  took part of the graph is read back from the execution plan (a ``DELEGATE`` node); when it took
  nothing (e.g. a uint8-quantized model), ``delegate`` says ``cpu``.
- ``"edgetpu"``: ``load_delegate("libedgetpu.so.1")``.
- anything else: an external delegate, ``LoadOptions.delegate_library`` with ``delegate_options``.

A delegate that cannot be loaded raises ``RuntimeUnavailable`` here; ``agent.runtime.select``
turns that into a logged fallback to the next candidate.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelError, ModelLoadError, RuntimeUnavailable
from edgefleet.agent.runtime._common import InputBinder, default_threads, dequantize, first_line
from edgefleet.agent.runtime.base import LoadOptions, Signature
from edgefleet.agent.wire import TensorSpec

# runtime name -> module that holds Interpreter and load_delegate
MODULES: dict[str, str] = {
    "litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
EDGETPU_LIBRARY = "libedgetpu.so.1"
CPU_DELEGATES = (None, "none", "cpu")


def import_runtime(runtime: str) -> ModuleType:
    """The interpreter module of ``runtime``; RuntimeUnavailable when it does not import here."""
    try:
        module = importlib.import_module(MODULES[runtime])
    except KeyError:
        raise RuntimeUnavailable(f"unknown TFLite runtime '{runtime}'") from None
    except Exception as exc:  # ImportError, or a wheel built for another numpy
        raise RuntimeUnavailable(f"{MODULES[runtime]} does not import: {first_line(exc)}") from exc
    if runtime == "tensorflow":
        return _TensorflowShim(module)  # type: ignore[return-value]
    return module


class _TensorflowShim:
    """tensorflow.lite spells load_delegate under ``experimental``."""

    def __init__(self, lite: Any) -> None:
        self.Interpreter = lite.Interpreter
        self.load_delegate = lite.experimental.load_delegate
        self.OpResolverType = getattr(lite.experimental, "OpResolverType", None)


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) == len(detail["shape"]) else detail["shape"]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = bool(scale)
    return TensorSpec(name=detail["name"], shape=[None if int(d) < 0 else int(d) for d in dims],
                      dtype=np.dtype(detail["dtype"]).name,
                      scale=float(scale) if quantized else None,
                      zero_point=int(zero_point) if quantized else None)


def _unique_names(specs: list[TensorSpec]) -> list[TensorSpec]:
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        name = spec.name or "output"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        out.append(spec.model_copy(update={"name": name}) if name != spec.name else spec)
    return out


class TFLiteModel(Signature):
    def __init__(self, path: Path, runtime: str, options: LoadOptions, content: bytes | None = None) -> None:
        module = import_runtime(runtime)
        self.path = path
        self.runtime = runtime
        self.threads = options.threads or default_threads()
        self.dequantize_outputs = bool(getattr(options, "dequantize", False))
        delegates, self.delegate = self._delegates(module, options)
        kwargs: dict[str, Any] = {"num_threads": self.threads}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        resolver = getattr(module, "OpResolverType", None)
        if options.delegate in CPU_DELEGATES and resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        source: dict[str, Any] = {"model_content": content} if content is not None else {"model_path": str(path)}
        try:
            interpreter = module.Interpreter(**source, **kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            message = first_line(exc)
            if "custom op" in message.lower():
                raise RuntimeUnavailable(f"{self.delegate} cannot run this model: {message}") from exc
            if delegates and "delegate" in message.lower():
                raise RuntimeUnavailable(f"{self.delegate} delegate cannot run this model: {message}") from exc
            raise ModelLoadError(f"{path}: not a loadable TFLite model: {message}") from exc
        self._interpreter = interpreter
        if options.delegate == "xnnpack" and not self._has_delegate_node():
            self.delegate = "cpu"  # XNNPACK was applied but took no node of this graph
        in_details = interpreter.get_input_details()
        out_details = interpreter.get_output_details()
        self._inputs = [_spec(d) for d in in_details]
        self._outputs = _unique_names([_spec(d) for d in out_details])
        self._binder = InputBinder(self._inputs)
        self._in_index = [int(d["index"]) for d in in_details]
        self._current_shapes = [tuple(int(x) for x in d["shape"]) for d in in_details]
        self._dynamic = any(None in s.shape for s in self._inputs)
        self._out_index = [(s.name, int(d["index"])) for s, d in zip(self._outputs, out_details, strict=True)]
        self._set = interpreter.set_tensor
        self._get = interpreter.get_tensor
        self._invoke = interpreter.invoke

    @staticmethod
    def _delegates(module: Any, options: LoadOptions) -> tuple[list[Any], str]:
        name = options.delegate
        if name in CPU_DELEGATES:
            return [], "cpu"
        if name == "xnnpack":
            return [], "xnnpack"
        library = EDGETPU_LIBRARY if name == "edgetpu" else options.delegate_library
        if not library:
            raise RuntimeUnavailable(f"delegate '{name}' has no library path (runtime.external_delegates)")
        try:
            # dlopen first: LiteRT's Delegate object breaks in __del__ when its own dlopen fails
            ctypes.CDLL(library)
            return [module.load_delegate(library, dict(options.delegate_options) or None)], str(name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"{name} delegate ({library}) failed to load: {first_line(exc)}") from exc

    def _has_delegate_node(self) -> bool:
        try:
            return any(op.get("op_name") == "DELEGATE" for op in self._interpreter._get_ops_details())
        except Exception:  # an older interpreter without the introspection call: trust the request
            return True

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._binder.check(feeds)
        set_tensor = self._set
        try:
            if self._dynamic:
                self._resize(arrays)  # allocate_tensors can fail here on a corrupt model
            for index, array in zip(self._in_index, arrays, strict=True):
                set_tensor(index, array)
            self._invoke()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path.name}: inference failed: {first_line(exc)}") from exc
        get = self._get
        if self.dequantize_outputs:
            return self._dequantized()
        return {name: get(index) for name, index in self._out_index}

    def _resize(self, arrays: list[np.ndarray]) -> None:
        changed = False
        for i, array in enumerate(arrays):
            if array.shape != self._current_shapes[i]:
                self._interpreter.resize_tensor_input(self._in_index[i], list(array.shape), strict=True)
                self._current_shapes[i] = array.shape
                changed = True
        if changed:
            self._interpreter.allocate_tensors()

    def _dequantized(self) -> dict[str, np.ndarray]:
        result = {}
        for spec, (name, index) in zip(self._outputs, self._out_index, strict=True):
            value = self._get(index)
            result[name] = dequantize(value, spec) if spec.quantized else value
        return result

    def close(self) -> None:
        self._interpreter = None
        self._set = self._get = self._invoke = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions, runtime: str = "litert") -> TFLiteModel:
    return TFLiteModel(Path(path), runtime, options)

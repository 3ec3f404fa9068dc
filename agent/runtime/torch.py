"""PyTorch backend: TorchScript / lite-interpreter files via ``torch.jit.load``, ExecuTorch ``.pte``
via ``executorch.runtime`` when it is installed.

A TorchScript file does not record tensor shapes. When the file carries an extra file
``edgefleet.json`` (``{"inputs": [TensorSpec...], "outputs": [TensorSpec...]}``, written with
``torch.jit.save(m, path, _extra_files={"edgefleet.json": ...})``) that signature is used and checked;
otherwise inputs are named after ``forward``'s arguments with unknown shape (rank-free, ``shape: []``,
not checked) and outputs are ``output`` or ``output_0..n`` for a tuple.

Delegates: ``cpu`` and ``cuda`` (a torch built with CUDA and a GPU it can use: a Jetson with
NVIDIA's wheel, an x86 box with an NVIDIA card). On ``cuda`` the module lives on the GPU; each
inference moves every input there once and every output back once, and with
``runtime.provider_options: {cuda: {fp16: true}}`` the module and its float inputs run in half
precision (outputs come back as float32). The model is warmed up at load, before the daemon
reports READY, so the first request does not pay for CUDA's lazy initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import ModelError, ModelLoadError, RuntimeUnavailable
from edgefleet.agent.runtime._common import InputBinder, default_threads, first_line
from edgefleet.agent.runtime.base import LoadOptions, Signature
from edgefleet.agent.wire import TensorSpec

SIGNATURE_FILE = "edgefleet.json"
_SCHEMA_DTYPES = {"Tensor": "float32", "int": "int64", "float": "float64", "bool": "bool"}


WARMUP_RUNS = 3
DELEGATES = ("cuda", "cpu")  # what ``auto`` tries, in this order


def _import_torch() -> Any:
    try:
        import torch
    except Exception as exc:
        raise RuntimeUnavailable(f"torch does not import: {first_line(exc)}") from exc
    return torch


def cuda_status(torch: Any | None = None) -> tuple[bool, str]:
    """(usable, why): whether this torch can run on a CUDA GPU here."""
    if torch is None:
        try:
            torch = _import_torch()
        except RuntimeUnavailable as exc:
            return False, str(exc)
    built = getattr(torch.version, "cuda", None)
    if not built:
        return False, f"torch {torch.__version__} is built without CUDA"
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # a broken driver raises from the CUDA runtime
        return False, f"CUDA {built} build, but CUDA does not initialise: {first_line(exc)}"
    if count == 0:
        return False, f"CUDA {built} build, but torch.cuda.is_available() is False (no usable GPU or driver)"
    return True, f"{torch.cuda.get_device_name(0)} (CUDA {built})"


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class TorchScriptModel(Signature):
    runtime = "torch"

    def __init__(self, path: Path, options: LoadOptions) -> None:
        torch = _import_torch()
        self.path = path
        self.threads = options.threads or default_threads()
        self.delegate = "cuda" if options.delegate == "cuda" else "cpu"
        if options.delegate not in (None, "cpu", "cuda"):
            raise RuntimeUnavailable(f"torch has no delegate '{options.delegate}' (cuda or cpu)")
        settings = options.provider_options.get("cuda", {}) if self.delegate == "cuda" else {}
        self.fp16 = _flag(settings.get("fp16", False))
        if self.delegate == "cuda":
            usable, why = cuda_status(torch)
            if not usable:
                raise RuntimeUnavailable(f"cuda: {why}")
        self._device = torch.device(f"cuda:{int(settings.get('device', 0))}" if self.delegate == "cuda" else "cpu")
        extra = {SIGNATURE_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location=self._device, _extra_files=extra)
        except Exception as exc:
            try:  # a lite-interpreter (.ptl) file holding bytecode only
                from torch.jit.mobile import _load_for_lite_interpreter

                module = _load_for_lite_interpreter(str(path))
            except Exception:
                raise ModelLoadError(f"{path}: not a loadable TorchScript file: {first_line(exc)}") from exc
            if self.delegate == "cuda":
                raise RuntimeUnavailable("cuda: a lite-interpreter (.ptl) file runs on the CPU only") from exc
        if hasattr(module, "eval"):
            module.eval()
        if self.fp16 and hasattr(module, "half"):
            module = module.half()
        self._module = module
        self._torch = torch
        self._inputs, self._outputs, checked = self._signature(module, extra[SIGNATURE_FILE])
        self._binder = InputBinder(self._inputs, check_shapes=checked)
        self._scalar = [s.dtype != "float32" and s.shape == [] and not checked for s in self._inputs]
        self._out_names = [s.name for s in self._outputs]
        if self.delegate == "cuda":
            self._warm_up(checked)

    def _warm_up(self, checked: bool) -> None:
        """A few inferences on example inputs, so CUDA's lazy set-up happens at load, not on a request."""
        if not checked:
            return  # no shapes to make inputs from: the first real inference warms it up
        from edgefleet.agent.runtime.synthetic import example_feeds

        feeds = example_feeds(self._inputs)
        for _ in range(WARMUP_RUNS):
            self.infer(feeds)
        self._torch.cuda.synchronize(self._device)

    def _to_device(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array))
        if self._device.type == "cpu":
            return tensor
        if self.fp16 and tensor.is_floating_point():
            return tensor.to(self._device, dtype=self._torch.float16, non_blocking=True)
        return tensor.to(self._device, non_blocking=True)

    def _to_numpy(self, value: Any) -> np.ndarray:
        if not hasattr(value, "numpy"):
            return np.asarray(value)
        if value.device.type != "cpu":
            value = value.to("cpu")
        if value.dtype == self._torch.float16:
            value = value.float()
        return np.asarray(value.numpy())

    @staticmethod
    def _signature(module: Any, meta: str | bytes) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
        if meta:
            data = json.loads(meta)
            return ([TensorSpec.model_validate(s) for s in data["inputs"]],
                    [TensorSpec.model_validate(s) for s in data["outputs"]], True)
        try:
            args = module.forward.schema.arguments[1:]
            inputs = [TensorSpec(name=a.name, shape=[], dtype=_SCHEMA_DTYPES.get(str(a.type), "float32"))
                      for a in args]
            returns = module.forward.schema.returns
            count = len(returns[0].type.elements()) if returns and str(returns[0].type).startswith("Tuple") else 1
        except (AttributeError, RuntimeError):
            inputs, count = [TensorSpec(name="input", shape=[], dtype="float32")], 1
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
        return inputs, [TensorSpec(name=n, shape=[], dtype="float32") for n in names], False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._binder.check(feeds)
        torch = self._torch
        args = [int(a) if scalar and a.ndim == 0 else self._to_device(a)
                for a, scalar in zip(arrays, self._scalar, strict=True)]
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:
            raise ModelError(f"{self.path.name}: inference failed: {first_line(exc)}") from exc
        values = list(result) if isinstance(result, tuple | list) else [result]
        if len(values) != len(self._out_names):
            raise ModelError(f"{self.path.name}: returned {len(values)} outputs, the signature lists "
                             f"{len(self._out_names)}")
        return {name: self._to_numpy(v) for name, v in zip(self._out_names, values, strict=True)}

    def close(self) -> None:
        self._module = None


class ExecuTorchModel(Signature):
    runtime = "executorch"

    def __init__(self, path: Path, options: LoadOptions) -> None:
        try:
            from executorch.runtime import Runtime
        except Exception as exc:
            raise RuntimeUnavailable(f"executorch is not installed here: {first_line(exc)}") from exc
        torch = _import_torch()
        self.path = path
        self.threads = options.threads or default_threads()
        self.delegate = "cpu"
        self._torch = torch
        try:
            program = Runtime.get().load_program(path)
            self._method = program.load_method("forward")
            meta = self._method.metadata
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a loadable ExecuTorch program: {first_line(exc)}") from exc
        self._inputs = [self._spec(f"input_{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
        self._outputs = [self._spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]
        self._binder = InputBinder(self._inputs)

    def _spec(self, name: str, tmeta: Any) -> TensorSpec:
        dtype = str(getattr(tmeta, "dtype", lambda: "float32")()).replace("torch.", "")
        if dtype.isdigit():  # ScalarType as an integer
            dtype = {"0": "uint8", "1": "int8", "3": "int32", "4": "int64", "6": "float32"}.get(dtype, "float32")
        return TensorSpec(name=name, shape=[int(d) for d in tmeta.sizes()], dtype=dtype)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._binder.check(feeds)
        try:
            result = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        except Exception as exc:
            raise ModelError(f"{self.path.name}: inference failed: {first_line(exc)}") from exc
        return {s.name: np.asarray(v) for s, v in zip(self._outputs, result, strict=True)}

    def close(self) -> None:
        self._method = None


def load(path: Path, options: LoadOptions) -> TorchScriptModel:
    return TorchScriptModel(Path(path), options)


def load_pte(path: Path, options: LoadOptions) -> ExecuTorchModel:
    return ExecuTorchModel(Path(path), options)

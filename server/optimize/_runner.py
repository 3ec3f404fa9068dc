"""A small private adapter that loads a model file and runs it on a dict of arrays.

It prefers the agent's runtime layer (``agent.runtime.load_model``) so a variant is proven in the
same code the devices run; where that is not importable it drives ONNX Runtime, LiteRT or
TorchScript directly. Every third-party failure leaves as :class:`agent.errors.ModelLoadError`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.errors import ModelLoadError


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Runner(Protocol):
    runtime: str
    load_ms: float

    @property
    def inputs(self) -> list[InputSpec]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def detect_format(path: Path) -> str:
    head = path.read_bytes()[:8] if path.is_file() else b""
    if head[4:8] == b"TFL3" or path.suffix == ".tflite":
        return "tflite"
    if head[:2] == b"PK" or path.suffix in (".pt", ".pth", ".jit", ".ts", ".torchscript"):
        return "torchscript"
    return "onnx"


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class _Ort:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, level: str | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if level is not None:
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        start = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{path.name}: onnxruntime cannot load it: {_first_line(exc)}") from exc
        self.load_ms = (time.perf_counter() - start) * 1e3
        self._outputs = [o.name for o in self._sess.get_outputs()]

    @property
    def inputs(self) -> list[InputSpec]:
        return [InputSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                          _ORT_TYPES.get(i.type, "float32")) for i in self._sess.get_inputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._sess.run(self._outputs, dict(feeds))
        return {n: np.asarray(v) for n, v in zip(self._outputs, values, strict=True)}


class _LiteRT:
    runtime = "litert"

    def __init__(self, path: Path, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelLoadError("LiteRT (ai-edge-litert) is not installed on the server") from exc
        start = time.perf_counter()
        try:
            self._it = Interpreter(model_path=str(path), num_threads=max(threads, 1))
            self._it.allocate_tensors()
        except Exception as exc:  # LiteRT raises RuntimeError/ValueError with the kernel's message
            raise ModelLoadError(f"{path.name}: LiteRT cannot load it: {_first_line(exc)}") from exc
        self.load_ms = (time.perf_counter() - start) * 1e3

    @property
    def inputs(self) -> list[InputSpec]:
        return [InputSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                for d in self._it.get_input_details()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for d in self._it.get_input_details():
            value = np.asarray(feeds[d["name"]])
            if tuple(value.shape) != tuple(d["shape"]):
                self._it.resize_tensor_input(d["index"], list(value.shape))
                self._it.allocate_tensors()
            scale, zero = d["quantization"]
            if scale and value.dtype.kind == "f" and np.dtype(d["dtype"]).kind in "iu":  # float in, int8 model
                info = np.iinfo(d["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max)
            self._it.set_tensor(d["index"], value.astype(d["dtype"], copy=False))
        self._it.invoke()
        out: dict[str, np.ndarray] = {}
        for d in self._it.get_output_details():
            value = np.array(self._it.get_tensor(d["index"]))
            scale, zero = d["quantization"]
            out[d["name"]] = ((value.astype(np.float32) - zero) * scale) if scale else value
        return out


class _TorchScript:
    runtime = "torch"

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import torch
        except ImportError as exc:
            raise ModelLoadError("PyTorch is not installed on the server (install the torch extra)") from exc
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError with a C++ trace
            raise ModelLoadError(f"{path.name}: torch.jit.load cannot load it: {_first_line(exc)}") from exc
        self.load_ms = (time.perf_counter() - start) * 1e3

    @property
    def inputs(self) -> list[InputSpec]:
        return []  # a TorchScript file carries no tensor signature: inputs come from samples

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
        with self._torch.inference_mode():
            out = self.module(*args)
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        return {f"output_{i}": t.detach().cpu().numpy() for i, t in enumerate(flat)}


def open_model(path: Path, *, threads: int = 1, ort_level: str | None = None) -> Runner:
    """Load ``path`` in the runtime its format needs. ``ort_level`` overrides ONNX Runtime's online
    graph optimization level (a ``GraphOptimizationLevel`` member name)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    fmt = detect_format(path)
    if fmt == "onnx":
        return _Ort(path, threads, ort_level)
    if fmt == "tflite":
        return _LiteRT(path, threads)
    return _TorchScript(path, threads)


def run_rows(runner: Runner, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every sample row; one batched call where the model takes it, else row by row."""
    try:
        return runner.run(samples)
    except ModelLoadError:
        raise
    except Exception:  # a static batch dim or a stateful model: fall back to one row at a time
        pass
    count = len(next(iter(samples.values())))
    rows = [runner.run({k: v[i:i + 1] for k, v in samples.items()}) for i in range(count)]
    return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}


def p50_ms(runner: Runner, feeds: Mapping[str, np.ndarray], *, runs: int = 20, warmup: int = 3,
           budget_s: float = 3.0) -> dict[str, Any]:
    """Median latency of single-row inference (after warm-up), bounded by ``budget_s``."""
    return interleaved_p50_ms([(runner, feeds)], runs=runs, warmup=warmup, budget_s=budget_s)[0]


def interleaved_p50_ms(models: Sequence[tuple[Runner, Mapping[str, np.ndarray]]], *, runs: int = 20,
                       warmup: int = 3, budget_s: float = 3.0) -> list[dict[str, Any]]:
    """``p50_ms`` of each (runner, feeds), timed in turn one call each: whatever else the machine does meets
    them alike, where timing one model after the other let a busy moment land on one of them."""
    for _ in range(warmup):
        for runner, feeds in models:
            runner.run(feeds)
    times: list[list[float]] = [[] for _ in models]
    deadline = time.perf_counter() + budget_s
    while len(times[0]) < runs and (len(times[0]) < 3 or time.perf_counter() < deadline):
        for (runner, feeds), taken in zip(models, times, strict=True):
            start = time.perf_counter()
            runner.run(feeds)
            taken.append((time.perf_counter() - start) * 1e3)
    return [{"p50_ms": round(statistics.median(taken), 4), "runs": len(taken)} for taken in times]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

"""``python -m agent.ota.probe_load MODEL [--format F]``: load a model and run it once on synthetic inputs.

Run in a child process before a model is installed, so a file that crashes the runtime
(a segfault in a kernel, an abort in a delegate) takes down only this process. Prints one JSON
line ``{"ok": true, "outputs": {name: shape}}`` and exits 0, or exits non-zero with a reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.ota.synthetic import synthetic_feeds
from edgefleet.agent.wire import TensorSpec


def _runtime_loader() -> Any | None:
    """The runtime layer's loader (agent/runtime), when it offers one."""
    try:
        import edgefleet.agent.runtime as runtime
    except ImportError:
        return None
    for name in ("load_model", "load", "open_model"):
        loader = getattr(runtime, name, None)
        if callable(loader):
            return loader
    return None


def _bare_run(path: Path, fmt: str) -> dict[str, Any]:
    """Load with the bare runtime when the runtime layer is not there (ONNX, TFLite, TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        specs = [TensorSpec(name=i.name, shape=[d if isinstance(d, int) else None for d in i.shape],
                            dtype=_ort_dtype(i.type)) for i in session.get_inputs()]
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, synthetic_feeds(specs))
        return {name: list(np.asarray(value).shape) for name, value in zip(names, results, strict=True)}
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            spec = TensorSpec(name=detail["name"], shape=[int(d) for d in detail["shape"]],
                              dtype=np.dtype(detail["dtype"]).name)
            interpreter.set_tensor(detail["index"], synthetic_feeds([spec])[spec.name])
        interpreter.invoke()
        return {d["name"]: list(interpreter.get_tensor(d["index"]).shape) for d in interpreter.get_output_details()}
    raise SystemExit(f"no runtime to test-load a {fmt} model")


def _ort_dtype(type_name: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
            "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
            "tensor(int8)": "int8", "tensor(bool)": "bool"}.get(type_name, "float32")


def probe(path: Path, fmt: str) -> dict[str, Any]:
    loader = _runtime_loader()
    if loader is None:
        return _bare_run(path, fmt)
    try:
        model = loader(path)
    except TypeError:  # a runtime layer whose loader wants more than a path: use the bare runtime
        return _bare_run(path, fmt)
    try:
        outputs: Mapping[str, np.ndarray] = model.infer(synthetic_feeds(model.inputs))
        return {name: list(np.asarray(value).shape) for name, value in outputs.items()}
    finally:
        model.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.ota.probe_load")
    parser.add_argument("model", type=Path)
    parser.add_argument("--format", default=None)
    args = parser.parse_args(argv)
    fmt = args.format or args.model.suffix.lstrip(".")
    try:
        outputs = probe(args.model, fmt)
    except Exception as exc:
        print(f"test-load failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2
    print(json.dumps({"ok": True, "outputs": outputs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

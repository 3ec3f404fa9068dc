"""``python -m server.sandbox_child TASK --cpu-s N --memory-mb M``: one bounded task on a model file.

Started by ``server.sandbox.run`` (see there for the protocol). The limits are set first, before any
runtime is imported; stray output of the runtimes goes to stderr so that stdout carries only the
protocol's JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Emit = Callable[[float, str], None]


class TaskError(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _calibration(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def inspect(args: dict[str, Any], _emit: Emit) -> dict[str, Any]:
    """Format and signature (``server.formats.inspect_model``), then the drift profile on the model."""
    from edgefleet.server.calibration import CalibrationError, check_calibration, signature
    from edgefleet.server.formats import NotAModel, inspect_model
    from edgefleet.server.quality import compute_profile

    path = Path(args["path"])
    try:
        info = inspect_model(path)
    except NotAModel as exc:
        raise TaskError(str(exc), "not_a_model") from exc
    calibration = _calibration(args.get("calibration"))
    if calibration is not None:
        try:
            check_calibration(calibration, signature(info.inputs))
        except CalibrationError as exc:
            raise TaskError(str(exc), "bad_calibration") from exc
    profile, source, note = compute_profile(path, task=str(args.get("task") or "other"), inputs=info.inputs,
                                            preprocess=args.get("preprocess"), calibration=calibration,
                                            name=str(args.get("name") or path.stem))
    return {"format": info.format, "inputs": info.inputs, "outputs": info.outputs, "profile": profile,
            "source": source, "note": note}


def bsdiff(args: dict[str, Any], _emit: Emit) -> dict[str, Any]:
    import bsdiff4

    bsdiff4.file_diff(args["old"], args["new"], args["patch"])
    return {"size": os.path.getsize(args["patch"])}


def tensor_delta(args: dict[str, Any], _emit: Emit) -> dict[str, Any]:
    """A tensor delta old→new (server/tensordelta.py) into ``patch``; its summary."""
    from edgefleet.server.tensordelta import build_tensor_delta
    from edgefleet.server.tensors import NotParsable, read_layout

    try:
        old, new = read_layout(Path(args["old"]), external=False), read_layout(Path(args["new"]), external=False)
    except NotParsable as exc:
        raise TaskError(str(exc), "not_parsable") from exc
    return {"summary": build_tensor_delta(old, new, Path(args["patch"])).summary()}


def variants(args: dict[str, Any], emit: Emit) -> dict[str, Any]:
    from edgefleet.server.optimize import OptimizeError, build_variants

    try:
        results = build_variants(Path(args["reference"]), str(args["format"]), str(args["target"]),
                                 Path(args["out_dir"]), _calibration(args.get("calibration")), emit)
    except OptimizeError as exc:
        raise TaskError(str(exc), "optimize") from exc
    return {"variants": [{"name": r.name, "path": str(r.path) if r.path is not None else None, "format": r.format,
                          "status": r.status, "report": r.report} for r in results]}


TASKS: dict[str, Callable[[dict[str, Any], Emit], dict[str, Any]]] = {
    "inspect": inspect, "bsdiff": bsdiff, "tensor_delta": tensor_delta, "variants": variants}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, paths: what json cannot write by itself."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def limit_self(cpu_s: float, memory_mb: int) -> None:
    cpu = max(1, math.ceil(cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # SIGXCPU at the soft limit, SIGKILL 5 s later
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.sandbox_child")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--cpu-s", type=float, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    options = parser.parse_args(argv)
    limit_self(options.cpu_s, options.memory_mb)
    protocol: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a runtime printing to stdout cannot corrupt the protocol

    def say(document: dict[str, Any]) -> None:
        protocol.write(json.dumps(document, default=_plain) + "\n")
        protocol.flush()

    def emit(fraction: float, message: str) -> None:
        say({"progress": fraction, "message": message})

    try:
        args = json.load(sys.stdin)
        say({"result": TASKS[options.task](args, emit)})
    except TaskError as exc:
        say({"error": str(exc), "kind": exc.kind})
        return 3
    except MemoryError:
        say({"error": "MemoryError", "kind": "memory"})
        return 4
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        say({"error": f"{type(exc).__name__}: {first}", "kind": "failed"})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

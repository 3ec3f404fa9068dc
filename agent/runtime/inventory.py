"""Which runtimes import here, and which delegates / execution providers each could use (and why not)."""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
from importlib import metadata
from typing import Any

from edgefleet.agent.runtime._common import first_line

# runtime name -> (module imported to prove it works, distribution for its version)
RUNTIMES: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite", "tensorflow"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "torch": ("torch", "torch"),
    "executorch": ("executorch.runtime", "executorch"),
}
TFLITE_RUNTIMES = ("litert", "tflite_runtime", "tensorflow")


@functools.cache
def runtime_status(name: str) -> tuple[bool, str, str | None]:
    """(imports, reason, version). Cached: importing is slow and its answer does not change."""
    module, dist = RUNTIMES[name]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return False, f"{dist} is not installed", None
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or e.g. tflite-runtime 2.14 built against numpy 1
        return False, f"{module} does not import: {first_line(exc)}", None
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = None
    return True, "imports", version


def available_runtimes() -> list[str]:
    return [name for name in RUNTIMES if runtime_status(name)[0]]


def _shared_library(name: str) -> tuple[bool, str]:
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return False, f"{name} cannot be loaded: {first_line(exc)}"
    return True, f"{name} loads"


def tflite_delegates(hw: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    coral = bool((hw or {}).get("coral"))
    lib_ok, lib_reason = _shared_library("libedgetpu.so.1")
    if lib_ok and coral:
        edgetpu = {"usable": True, "reason": f"{lib_reason}; Coral found"}
    elif lib_ok:
        edgetpu = {"usable": False,
                   "reason": f"{lib_reason} but no Coral device (USB 1a6e:089a/18d1:9302, /dev/apex_*)"}
    else:
        edgetpu = {"usable": False,
                   "reason": lib_reason + ("; a Coral is present: install libedgetpu" if coral else "")}
    return {
        "xnnpack": {"usable": True, "reason": "built into the interpreter (applied by default)"},
        "edgetpu": edgetpu,
        "gpu": {"usable": False, "reason": "not in the Linux wheels: name its library in runtime.external_delegates"},
        "cpu": {"usable": True, "reason": "built-in kernels"},
    }


def ort_providers() -> dict[str, dict[str, Any]]:
    import onnxruntime as ort

    from edgefleet.agent.runtime.onnx import RANKED_PROVIDERS

    available = ort.get_available_providers()
    return {p: {"usable": p in available,
                "reason": "listed by get_available_providers()" if p in available
                else "not in this onnxruntime build's get_available_providers()"}
            for p in RANKED_PROVIDERS}


def torch_delegates() -> dict[str, dict[str, Any]]:
    from edgefleet.agent.runtime.torch import cuda_status

    usable, why = cuda_status()
    return {"cuda": {"usable": usable, "reason": why},
            "cpu": {"usable": True, "reason": "built-in kernels"}}


def runtime_inventory(hw: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    inventory: dict[str, dict[str, Any]] = {}
    for name in RUNTIMES:
        ok, reason, version = runtime_status(name)
        entry: dict[str, Any] = {"available": ok, "version": version, "reason": reason}
        if ok and name in TFLITE_RUNTIMES:
            entry["delegates"] = tflite_delegates(hw)
        elif ok and name == "onnxruntime":
            entry["providers"] = ort_providers()
        elif ok and name == "torch":
            entry["delegates"] = torch_delegates()
        inventory[name] = entry
    return inventory

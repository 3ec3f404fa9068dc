"""What a device sends when it enrolls: the device class and hardware from the runtime layer's probe."""

from __future__ import annotations

import importlib.util
from typing import Any

RUNTIME_MODULES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "onnxruntime": "onnxruntime",
                   "torch": "torch", "executorch": "executorch"}


def hardware() -> tuple[str | None, dict[str, Any]]:
    """(device class, hw) from the runtime layer's probe, else the installed runtimes alone."""
    try:
        from edgefleet.agent import runtime

        hw = runtime.probe_hardware()  # type: ignore[attr-defined]
        device_class = runtime.device_class(hw)  # type: ignore[attr-defined]
        runtimes = list(runtime.available_runtimes())  # type: ignore[attr-defined]
        data = hw.model_dump(mode="json") if hasattr(hw, "model_dump") else dict(hw) if isinstance(hw, dict) else {}
        data["runtimes"] = runtimes
        return device_class, data
    except (ImportError, AttributeError, TypeError):
        runtimes = [name for name, module in RUNTIME_MODULES.items() if importlib.util.find_spec(module)]
        return None, {"runtimes": runtimes}

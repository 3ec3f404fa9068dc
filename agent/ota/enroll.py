"""Enrollment with the shared token: the device class and hardware from the runtime layer's probe."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.ota.serverapi import ServerApi, save_token
from agent.wire import EnrollRequest

RUNTIME_MODULES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "onnxruntime": "onnxruntime",
                   "torch": "torch", "executorch": "executorch"}


def enroll(config: AgentConfig, api: ServerApi) -> str:
    """POST /v1/enroll; the token is saved under ``state_dir/device-token`` (0600) and returned."""
    server = config.server
    if not server.enrollment_token:
        raise ConfigError("no server.token and no server.enrollment_token to enroll with")
    device_class, hw = hardware()
    request = EnrollRequest(device_id=config.device_id, enrollment_token=server.enrollment_token,
                            device_class=server.device_class or device_class, tags=server.tags, hw=hw)
    token = api.enroll(request).token
    save_token(Path(config.state_dir), token)
    return token


def hardware() -> tuple[str | None, dict[str, Any]]:
    """(device class, hw) from the runtime layer's probe, else the installed runtimes alone."""
    try:
        from agent import runtime

        hw = runtime.probe_hardware()  # type: ignore[attr-defined]
        device_class = runtime.device_class(hw)  # type: ignore[attr-defined]
        runtimes = list(runtime.available_runtimes())  # type: ignore[attr-defined]
        data = hw.model_dump(mode="json") if hasattr(hw, "model_dump") else dict(hw) if isinstance(hw, dict) else {}
        data["runtimes"] = runtimes
        return device_class, data
    except (ImportError, AttributeError, TypeError):
        runtimes = [name for name, module in RUNTIME_MODULES.items() if importlib.util.find_spec(module)]
        return None, {"runtimes": runtimes}

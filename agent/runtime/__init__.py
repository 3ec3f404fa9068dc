"""The agent's runtime layer: one model interface over LiteRT/TFLite, ONNX Runtime and PyTorch.

Public names (others code against these; keep them):

- ``detect_format(path)`` -> "tflite" | "onnx" | "torchscript" | "pte", from the file's content
- ``load_model(path, *, prefer, delegate, threads, autotune, cache_dir, external_delegates,
  provider_options)`` -> ``Model`` with ``.selection`` (each candidate, its status and reason)
- ``load_model_for_config(path, runtime_section, cache_dir)``
- ``available_runtimes()``; ``probe_hardware()``, ``device_class(hw)``, ``hardware_fingerprint(hw)``
- ``Model``, ``LoadOptions``; ``image_to_tensor(image, spec)``; ``example_feeds(specs)``
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.runtime.base import LoadOptions, Model
from edgefleet.agent.runtime.formats import Format, detect_format
from edgefleet.agent.runtime.image import image_to_tensor, read_image
from edgefleet.agent.runtime.inventory import available_runtimes, runtime_inventory
from edgefleet.agent.runtime.probe import device_class, hardware_fingerprint, probe_hardware
from edgefleet.agent.runtime.select import Candidate, load_model
from edgefleet.agent.runtime.synthetic import example_feeds

if TYPE_CHECKING:
    from edgefleet.agent.config import RuntimeSection

__all__ = [
    "Candidate", "Format", "LoadOptions", "Model", "available_runtimes", "detect_format", "device_class",
    "example_feeds", "hardware_fingerprint", "image_to_tensor", "load_model", "load_model_for_config",
    "probe_hardware", "read_image", "runtime_inventory",
]


def load_model_for_config(path: str | Path, runtime: RuntimeSection, cache_dir: Path | None = None) -> Model:
    """``load_model`` with the agent config's ``runtime:`` section."""
    return load_model(path, prefer=runtime.prefer, delegate=runtime.delegate, threads=runtime.threads,
                      autotune=runtime.autotune, cache_dir=cache_dir,
                      external_delegates=runtime.external_delegates, provider_options=runtime.provider_options)

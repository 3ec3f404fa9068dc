"""OpenCV, imported only where frames are captured, decoded or resized.

A device that takes JSON / ``.npy`` inputs only (and a 32-bit Pi, where PyPI has no opencv
wheel) installs without it; whatever needs it then fails with one line that says what to install.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from edgefleet.agent.errors import EdgefleetError

INSTALL_HINT = "pip install 'edgefleet[camera]'"
_module: ModuleType | None = None


class OpenCVMissing(EdgefleetError):
    """OpenCV is needed for this and is not installed (or does not import)."""


def available() -> bool:
    """Whether cv2 is installed, without importing it."""
    return _module is not None or importlib.util.find_spec("cv2") is not None


def load_cv2(purpose: str) -> ModuleType:
    """The cv2 module; ``purpose`` ("decoding an image", ...) names what needed it in the error."""
    global _module
    if _module is None:
        try:
            import cv2
        except ImportError as exc:
            why = "not installed" if importlib.util.find_spec("cv2") is None else f"broken: {exc}"
            raise OpenCVMissing(f"{purpose} needs OpenCV, which is {why}: {INSTALL_HINT}") from exc
        _module = cv2
    return _module

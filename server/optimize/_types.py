"""Value types shared by the optimize modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import EdgefleetError


class OptimizeError(EdgefleetError):
    """The reference model or its inputs cannot be optimized at all (bad file, bad calibration data)."""


@dataclass(frozen=True)
class Thresholds:
    """Agreement a candidate must reach against its reference on the validation inputs.

    ``top1_min`` applies to classifiers (task ``"classifier"``), the rest to every float output.
    ``max_abs_error`` is relative to the reference output's largest magnitude (``max|ref|``).
    """

    top1_min: float = 0.95
    cosine_min: float = 0.98
    max_rel_abs_error: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Near-exact recipes (graph rewrites, format conversion) vs lossy ones (quantization, pruning).
EXACT = Thresholds(top1_min=1.0, cosine_min=0.9999, max_rel_abs_error=1e-3)
FP16 = Thresholds(top1_min=0.99, cosine_min=0.999, max_rel_abs_error=1e-2)
LOSSY = Thresholds(top1_min=0.95, cosine_min=0.98, max_rel_abs_error=None)


@dataclass
class VariantResult:
    name: str
    path: Path | None
    format: str  # onnx | tflite | torchscript
    status: str  # ready | rejected
    report: dict[str, Any]

    @property
    def ready(self) -> bool:
        return self.status == "ready"

"""Optimized model variants, made and validated on the server.

``build_variants`` runs the recipes of a device class (``TARGETS``) on a reference model and
returns one :class:`VariantResult` per recipe, each ``ready`` or ``rejected`` with a report;
``validate_variant`` compares any candidate with its reference; ``validate_uploaded_variant``
judges a ready-made upload (e.g. Edge TPU-compiled TFLite).
"""

from edgefleet.server.optimize._pipeline import RECIPES, TARGETS, build_variants
from edgefleet.server.optimize._types import EXACT, FP16, LOSSY, OptimizeError, Thresholds, VariantResult
from edgefleet.server.optimize._uploaded import validate_uploaded_variant
from edgefleet.server.optimize._validate import validate_variant

__all__ = [
    "EXACT",
    "FP16",
    "LOSSY",
    "RECIPES",
    "TARGETS",
    "OptimizeError",
    "Thresholds",
    "VariantResult",
    "build_variants",
    "validate_uploaded_variant",
    "validate_variant",
]

"""Model quality on the server: a drift reference profile per version (computed at upload), drift
flags from the devices' telemetry, and accuracy from operator labels on uploaded samples.

The profile is computed on the version's calibration inputs when it has them (``source:
calibration``); otherwise on synthetic inputs drawn from the input signature (``source:
synthetic``): then the profile only shows the model's own output distribution on noise, and
live traffic will look drifted against it, so the profile says ``synthetic: true`` and devices
report its scores without an alarm ("reference is synthetic"). Upload calibration inputs for a
meaningful profile.
``compute_profile`` runs the uploaded model: the server calls it only in the bounded ``inspect`` child
(``server/sandbox_child.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.quality import profile_from_samples, summarize_fleet
from edgefleet.agent.wire import PreprocessSpec

log = logging.getLogger("edgefleet.server.quality")
MAX_PROFILE_ROWS = 256
SYNTHETIC_ROWS = 64


def image_input(inputs: list[dict[str, Any]], preprocess: dict[str, Any] | None) -> str | None:
    """The input that takes the camera image: ``preprocess.input``, else the first 4-D input."""
    named = (preprocess or {}).get("input")
    if named:
        return str(named)
    for spec in inputs:
        if len(spec.get("shape") or []) == 4:
            return str(spec["name"])
    return None


def _synthetic(inputs: list[dict[str, Any]], image: str | None, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = [rows] + [d if isinstance(d, int) and d > 0 else 32 for d in (spec.get("shape") or [])[1:]]
        dtype = np.dtype(spec.get("dtype") or "float32")
        if spec["name"] == image and dtype.kind == "f":
            out[spec["name"]] = rng.uniform(0.0, 1.0, shape).astype(dtype)  # a plausible /255 image tensor
        elif dtype.kind == "f":
            out[spec["name"]] = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        else:
            out[spec["name"]] = rng.integers(0, 100, shape).astype(dtype)
    return out


def compute_profile(model_path: Path, *, task: str, inputs: list[dict[str, Any]],
                    preprocess: dict[str, Any] | None, calibration: Mapping[str, np.ndarray] | None,
                    name: str) -> tuple[dict[str, Any] | None, str, str | None]:
    """(profile JSON or None, source, note). Never raises: a version without a profile is still a version."""
    from edgefleet.server.optimize._runner import open_model

    image = image_input(inputs, preprocess)
    source = "calibration" if calibration else "synthetic"
    try:
        if calibration:
            samples = {k: np.asarray(v)[:MAX_PROFILE_ROWS] for k, v in calibration.items()}
        else:
            samples = _synthetic(inputs, image, SYNTHETIC_ROWS)
        runner = open_model(model_path, threads=1)
        spec = PreprocessSpec.model_validate(preprocess) if preprocess else None
        profile = profile_from_samples(runner.run, samples, task if task in ("classification", "detection")
                                       else "other", image_input=image if image in samples else None,
                                       preprocess=spec, model=name)
    except Exception as exc:  # a model the server cannot run, or odd calibration arrays
        why = f"no drift profile: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log.warning("%s: %s", name, why)
        return None, "none", why
    note = None if calibration else "computed on synthetic inputs: upload calibration inputs for a real reference"
    document = profile.model_dump(mode="json")
    if calibration:
        # Agents before issue 18 refuse a profile with a key they do not know: a real reference leaves the new
        # key out (false is its default), so only a synthetic one, which they would alarm on, is lost to them.
        document.pop("synthetic", None)
    else:
        document["synthetic"] = True  # devices score it but raise no alarm on it
    return document, source, note


def profile_summary(profile: dict[str, Any] | None, source: str | None) -> dict[str, Any] | None:
    if not profile:
        return None
    return {"source": source, "samples": profile.get("samples"), "task": profile.get("task"),
            "stats": sorted((profile.get("stats") or {}).keys()), "created_at": profile.get("created_at")}


DRIFT_FLAG = {"model": (str,), "version": (int,), "drifted": (bool,), "ready": (bool,), "max_psi": (int, float),
              "max_stat": (str,), "samples": (int,), "threshold": (int, float), "synthetic": (bool,),
              "reason": (str,)}


def device_drift(section: Any) -> dict[str, Any] | None:
    """The compact drift flag of a device from its latest telemetry ``drift`` section (free-form on the wire:
    a value of the wrong type is None here, so one device's odd report never breaks the fleet's listing)."""
    if not isinstance(section, dict) or "max_psi" not in section:
        return None
    return {key: _typed(section.get(key), kinds) for key, kinds in DRIFT_FLAG.items()}


def _typed(value: Any, kinds: tuple[type, ...]) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        return None
    return value if isinstance(value, kinds) else None


def version_drift(latest: Mapping[str, Any], *, model: str, version: int,
                  threshold: float | None = None) -> dict[str, Any]:
    """Fleet drift of one model version from its devices' latest drift sections."""
    mine = {device: section for device, section in latest.items()
            if isinstance(section, dict) and section.get("model") == model and section.get("version") == version}
    summary = summarize_fleet(mine, threshold)
    entry = summary["versions"].get(f"{model}@{version}", {"devices": 0, "drifted": 0, "drifted_fraction": 0.0})
    return {"model": model, "version": version, "reporting": len(mine), "ready": entry["devices"],
            "drifted": entry["drifted"], "drifted_fraction": entry["drifted_fraction"],
            "flagged": entry["drifted"] > 0, "drifted_devices": summary["drifted_devices"],
            "devices": {device: device_drift(section) for device, section in sorted(mine.items())}}

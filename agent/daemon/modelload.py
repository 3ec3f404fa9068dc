"""Which model the daemon starts with, and how it is loaded.

The active A/B slot in the state directory wins (agent.ota.slots), else ``model.path``;
with neither the daemon starts without a model. Loading goes through the runtime layer's
``load_model_for_config`` (auto-selection, delegates, autotune cache).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from edgefleet.agent.config import AgentConfig, ModelSection, RuntimeSection
from edgefleet.agent.errors import ConfigError, ModelLoadError
from edgefleet.agent.runtime import load_model_for_config
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labels(labels: Path | list[str] | None) -> list[str] | None:
    if labels is None or isinstance(labels, list):
        return labels
    try:
        text = labels.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"model.labels: cannot read {labels}: {exc.strerror or exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def meta_from_config(section: ModelSection, path: Path) -> ModelMeta:
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    return ModelMeta(name=section.name or path.stem, version=section.version, sha256=sha, task=section.task,
                     labels=read_labels(section.labels), preprocess=section.preprocess)


def load_model(path: Path, runtime: RuntimeSection, cache_dir: Path | None) -> Model:
    """Load ``path`` with the runtime layer's automatic selection (and its autotune cache)."""
    return load_model_for_config(path, runtime, cache_dir)


def startup_model(config: AgentConfig) -> tuple[Path, ModelMeta] | None:
    """The active slot's model, else ``model.path`` with meta from the config, else None."""
    try:
        from edgefleet.agent.ota.slots import SlotStore
    except ImportError:
        SlotStore = None  # type: ignore[assignment,misc]
    if SlotStore is not None and config.state_dir.is_dir():
        try:
            active = SlotStore(config.state_dir).active()
        except Exception as exc:  # a damaged slot store falls back to the configured model
            log.error("cannot read the model slots in %s: %s", config.state_dir, exc)
            active = None
        if active is not None:
            return active
    if config.model.path is not None:
        return config.model.path, meta_from_config(config.model, config.model.path)
    return None

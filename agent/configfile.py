"""YAML config files validated by pydantic, with environment overrides.

``EDGEFLEET_MQTT__HOST=broker`` overrides ``mqtt.host``: the prefix, then the key path
joined by ``__``. Values are parsed as YAML scalars, so ``1883`` is an int and ``null`` is None.
Every error names the file and the dotted key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agent.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _set_path(tree: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{origin}: cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> list[tuple[str, list[str], Any]]:
    """(variable name, key path, parsed value) for every variable that starts with ``prefix``."""
    environ = os.environ if environ is None else environ
    found = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or name == prefix:
            continue
        path = [part.lower() for part in name[len(prefix) :].split("__") if part]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        found.append((name, path, value))
    return found


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"'{key}': {error['msg']}"


def load_config(
    model: type[ConfigT],
    path: str | Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> ConfigT:
    """Read ``path`` (or start from defaults when None), apply env overrides, validate."""
    origin = str(path) if path is not None else "(defaults)"
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for name, key_path, value in env_overrides(env_prefix, environ):
        _set_path(data, key_path, value, f"{origin} (environment {name})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{origin}: {problems}") from exc

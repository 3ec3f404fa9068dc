"""YAML config files validated by pydantic, with systemd credentials and environment overrides.

Sources, later ones winning: the YAML file, then one file per key in ``$CREDENTIALS_DIRECTORY``
(systemd's ``LoadCredential=``; the file's name is the dotted key, ``mqtt.password``), then the
environment: ``EDGEFLEET_MQTT__HOST=broker`` overrides ``mqtt.host`` (the prefix, then the key
path joined by ``__``; values parsed as YAML scalars, so ``1883`` is an int and ``null`` is None).

The ``EDGEFLEET_`` namespace is shared by the programs on one box, so each program skips the
variables that belong to another one (``foreign``): the operator CLI's (``EDGEFLEET_URL``,
``EDGEFLEET_ADMIN_TOKEN``...), the server's ``EDGEFLEET_SERVER_<KEY>`` for the agent, the agent's
``EDGEFLEET_SERVER__<KEY>`` for the server, test hooks. Every other variable under a program's
prefix is an override, and one that names no key is an error naming the variable.
Every error names the file and the dotted key.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgefleet.agent.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)

# The operator CLI's own variables (server/opcli.py), reserved here so no program takes them as overrides.
OPERATOR_CLI_VARIABLES = frozenset({
    "EDGEFLEET_URL", "EDGEFLEET_ADMIN_TOKEN", "EDGEFLEET_ADMIN_TOKEN_FILE", "EDGEFLEET_TOKEN", "EDGEFLEET_TOKEN_FILE",
})
SERVER_ENV_PREFIX = "EDGEFLEET_SERVER_"
TEST_ENV_PREFIX = "EDGEFLEET_TEST_"  # fault-injection knobs of the test suite (EDGEFLEET_TEST_CRASH_AT)
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
MAX_CREDENTIAL_BYTES = 64 * 1024


def foreign_to_agent(name: str) -> bool:
    """Variables under ``EDGEFLEET_`` that are not the agent's overrides."""
    if name in OPERATOR_CLI_VARIABLES or name.startswith(TEST_ENV_PREFIX):
        return True
    # EDGEFLEET_SERVER_LISTEN is the server's; EDGEFLEET_SERVER__URL is the agent's server.url
    return name.startswith(SERVER_ENV_PREFIX) and not name.startswith(SERVER_ENV_PREFIX + "_")


def foreign_to_server(name: str) -> bool:
    """Variables under ``EDGEFLEET_SERVER_`` that are not the server's overrides: the agent's server section."""
    return name.startswith(SERVER_ENV_PREFIX + "_")


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


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None,
                  foreign: Callable[[str], bool] = lambda _name: False) -> list[tuple[str, list[str], Any]]:
    """(variable name, key path, parsed value) for every variable that starts with ``prefix`` and is not foreign."""
    environ = os.environ if environ is None else environ
    found = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or name == prefix or foreign(name):
            continue
        path = [part.lower() for part in name[len(prefix) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        found.append((name, path, value))
    return found


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation admits (``Path | None`` -> [Path, NoneType])."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _field_types(model: type[BaseModel], path: list[str]) -> list[Any] | None:
    """The types the field at ``path`` admits, or None when no such field exists."""
    current: Any = model
    admitted: list[Any] = []
    for part in path:
        sections = [t for t in admitted or [current] if isinstance(t, type) and issubclass(t, BaseModel)]
        field = next((s.model_fields[part] for s in sections if part in s.model_fields), None)
        if field is None:
            return None
        admitted = _unwrap(field.annotation)
    return admitted


def credential_overrides(model: type[BaseModel], environ: Mapping[str, str]) -> list[tuple[str, list[str], Any]]:
    """(credential name, key path, value) for every file in ``$CREDENTIALS_DIRECTORY``.

    A key that holds a path (``signing_key``) gets the credential's path; any other key the file's text
    without its trailing newline (``admin_token``, ``mqtt.password``).
    """
    directory = environ.get(CREDENTIALS_ENV)
    if not directory:
        return []
    try:
        entries = sorted(p for p in Path(directory).iterdir() if p.is_file())
    except OSError as exc:
        raise ConfigError(f"{CREDENTIALS_ENV}={directory}: cannot list it: {exc.strerror or exc}") from exc
    found = []
    for entry in entries:
        path = [part for part in entry.name.split(".") if part]
        admitted = _field_types(model, path)
        if admitted is not None and any(isinstance(t, type) and issubclass(t, Path) for t in admitted):
            found.append((entry.name, path, str(entry)))
            continue
        try:
            with entry.open("rb") as handle:
                raw = handle.read(MAX_CREDENTIAL_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"credential {entry.name}: cannot read it: {exc.strerror or exc}") from exc
        if len(raw) > MAX_CREDENTIAL_BYTES:
            raise ConfigError(f"credential {entry.name}: larger than {MAX_CREDENTIAL_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"credential {entry.name}: not UTF-8 text") from None
        found.append((entry.name, path, text.rstrip("\r\n")))
    return found


def _describe(error: Mapping[str, Any], sources: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(p) for p in error["loc"])
    key = ".".join(loc) or "(top level)"
    # the overrides at, above or under the key (an unknown section names every variable that set into it)
    named = [source for path, source in sources.items() if loc and (path[:len(loc)] == loc or loc[:len(path)] == path)]
    origin = f" (from {', '.join(named)})" if named else ""
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'{origin}"
    return f"'{key}': {error['msg']}{origin}"


def load_config(
    model: type[ConfigT],
    path: str | Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    foreign: Callable[[str], bool] = lambda _name: False,
) -> ConfigT:
    """Read ``path`` (or start from defaults when None), apply credentials and env overrides, validate."""
    environ = os.environ if environ is None else environ
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
    sources: dict[tuple[str, ...], str] = {}
    overrides = [(f"credential {name}", key, value) for name, key, value in credential_overrides(model, environ)]
    overrides += [(f"environment {name}", key, value) for name, key, value in env_overrides(env_prefix, environ,
                                                                                            foreign)]
    for source, key_path, value in overrides:
        _set_path(data, key_path, value, f"{origin} ({source})")
        sources[tuple(key_path)] = source
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, sources) for e in exc.errors())
        raise ConfigError(f"{origin}: {problems}") from exc

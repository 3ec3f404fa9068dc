from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import load_agent_config
from edgefleet.agent.errors import ConfigError
from edgefleet.server.config import load_server_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_example_configs_are_valid() -> None:
    agent = load_agent_config(REPO / "configs" / "agent.yaml", environ={})
    assert agent.device_id
    server = load_server_config(REPO / "configs" / "server.yaml", environ={})
    assert server.listen


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: cam-01\nmqtt: {host: x, prot: 1883}\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path, environ={})
    assert str(path) in str(err.value)
    assert "unknown key 'mqtt.prot'" in str(err.value)


def test_ill_typed_key(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: cam-01\nmqtt: {port: not-a-port}\n")
    with pytest.raises(ConfigError, match=r"'mqtt.port'"):
        load_agent_config(path, environ={})


def test_env_overrides_parse_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: cam-01\n")
    env = {
        "EDGEFLEET_MQTT__HOST": "broker.lan",
        "EDGEFLEET_MQTT__PORT": "8883",
        "EDGEFLEET_API__LISTEN": "null",
    }
    cfg = load_agent_config(path, environ=env)
    assert cfg.mqtt.host == "broker.lan"
    assert cfg.mqtt.port == 8883
    assert cfg.api.listen is None


def test_env_override_with_bad_key_names_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: cam-01\n")
    with pytest.raises(ConfigError, match=r"unknown key 'mqtt.hots'"):
        load_agent_config(path, environ={"EDGEFLEET_MQTT__HOTS": "x"})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config"):
        load_agent_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_agent_config(write(tmp_path, "device_id: [\n"), environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_agent_config(write(tmp_path, "- a\n- b\n"), environ={})

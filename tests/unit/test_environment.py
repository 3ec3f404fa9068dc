"""The EDGEFLEET_ namespace on a shared box, and secrets from systemd credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import load_agent_config
from edgefleet.agent.errors import ConfigError
from edgefleet.server.config import load_server_config

OPERATOR = {"EDGEFLEET_URL": "http://updates.lan:8080", "EDGEFLEET_ADMIN_TOKEN": "s3cret",
            "EDGEFLEET_ADMIN_TOKEN_FILE": "/root/token", "EDGEFLEET_TOKEN": "x", "EDGEFLEET_TOKEN_FILE": "/t"}


def agent_yaml(tmp_path: Path, text: str = "device_id: cam-01\n") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def server_yaml(tmp_path: Path, text: str = "listen: 127.0.0.1:8080\n") -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_operator_cli_variables_leave_both_programs_alone(tmp_path: Path) -> None:
    env = {**OPERATOR, "EDGEFLEET_TEST_CRASH_AT": "trial"}
    agent = load_agent_config(agent_yaml(tmp_path), environ=env)
    assert agent.server.url is None and agent.server.token is None
    server = load_server_config(server_yaml(tmp_path), environ=env)
    assert server.admin_token is None


def test_agent_and_server_overrides_side_by_side(tmp_path: Path) -> None:
    env = {**OPERATOR,
           "EDGEFLEET_SERVER__URL": "http://updates.lan:8080",  # the agent's server.url
           "EDGEFLEET_MQTT__HOST": "broker.lan",  # the agent's mqtt.host
           "EDGEFLEET_SERVER_LISTEN": "0.0.0.0:9000",  # the server's listen
           "EDGEFLEET_SERVER_MQTT__PORT": "8883"}  # the server's mqtt.port
    agent = load_agent_config(agent_yaml(tmp_path), environ=env)
    assert (agent.server.url, agent.mqtt.host, agent.mqtt.port) == ("http://updates.lan:8080", "broker.lan", 1883)
    server = load_server_config(server_yaml(tmp_path), environ=env)
    assert (server.listen, server.mqtt.port, server.mqtt.host) == ("0.0.0.0:9000", 8883, "localhost")


@pytest.mark.parametrize(("variable", "key"), [
    ("EDGEFLEET_MQTT__HOTS", "mqtt.hots"),  # a misspelled leaf
    ("EDGEFLEET_MQQT__HOST", "mqqt"),  # a misspelled section
    ("EDGEFLEET_LOGLEVEL", "loglevel"),  # a misspelled top-level key
    ("EDGEFLEET_SERVER__TOKN", "server.tokn"),  # the agent's server section, misspelled
    ("EDGEFLEET_ADMIN_TOKN", "admin_tokn"),  # close to an operator variable is still not one
])
def test_a_misspelled_agent_override_is_an_error_naming_the_variable(tmp_path: Path, variable: str,
                                                                     key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_agent_config(agent_yaml(tmp_path), environ={**OPERATOR, variable: "x"})
    assert f"unknown key '{key}' (from environment {variable})" in str(err.value)


def test_a_misspelled_server_override_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'listn' \(from environment EDGEFLEET_SERVER_LISTN\)"):
        load_server_config(server_yaml(tmp_path), environ={"EDGEFLEET_SERVER_LISTN": "0.0.0.0:1"})
    with pytest.raises(ConfigError, match=r"'mqtt.port'.*\(from environment EDGEFLEET_SERVER_MQTT__PORT\)"):
        load_server_config(server_yaml(tmp_path), environ={"EDGEFLEET_SERVER_MQTT__PORT": "not-a-port"})


def test_server_listen_must_be_host_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'listen': Value error, must be HOST:PORT"):
        load_server_config(server_yaml(tmp_path, "listen: no-port\n"), environ={})


def credentials(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return directory


def test_server_secrets_from_credentials(tmp_path: Path) -> None:
    directory = credentials(tmp_path, admin_token="from-credential\n", mqtt__password="broker-pw\n",
                            signing_key="-----BEGIN PRIVATE KEY-----\n")
    config = server_yaml(tmp_path, "listen: 127.0.0.1:8080\nadmin_token: from-yaml\n")
    server = load_server_config(config, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert (server.admin_token, server.mqtt.password) == ("from-credential", "broker-pw")
    assert server.signing_key == directory / "signing_key"  # a path key gets the credential's path
    # the environment still wins over a credential
    env = {"CREDENTIALS_DIRECTORY": str(directory), "EDGEFLEET_SERVER_ADMIN_TOKEN": "from-env"}
    assert load_server_config(config, environ=env).admin_token == "from-env"


def test_agent_secrets_from_credentials(tmp_path: Path) -> None:
    directory = credentials(tmp_path, server__token="device-token\n", server__enrollment_token="enroll\n",
                            mqtt__password="pw", server__public_key="PEM")
    agent = load_agent_config(agent_yaml(tmp_path), environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert (agent.server.token, agent.server.enrollment_token, agent.mqtt.password) == ("device-token", "enroll", "pw")
    assert agent.server.public_key == directory / "server.public_key"


def test_a_misnamed_credential_is_an_error_naming_it(tmp_path: Path) -> None:
    directory = credentials(tmp_path, mqtt__pasword="pw")
    with pytest.raises(ConfigError, match=r"unknown key 'mqtt.pasword' \(from credential mqtt.pasword\)"):
        load_agent_config(agent_yaml(tmp_path), environ={"CREDENTIALS_DIRECTORY": str(directory)})


def test_a_huge_or_binary_credential_is_refused(tmp_path: Path) -> None:
    directory = credentials(tmp_path)
    (directory / "admin_token").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="credential admin_token: not UTF-8 text"):
        load_server_config(server_yaml(tmp_path), environ={"CREDENTIALS_DIRECTORY": str(directory)})
    (directory / "admin_token").write_bytes(b"a" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="credential admin_token: larger than 65536 bytes"):
        load_server_config(server_yaml(tmp_path), environ={"CREDENTIALS_DIRECTORY": str(directory)})

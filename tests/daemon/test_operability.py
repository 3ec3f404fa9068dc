"""The three programs as an operator meets them: --version, exit codes, a taken port, log formats, the
operator CLI's variables on the same box. Real processes, real sockets, real files."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from edgefleet.agent.version import package_version
from tests.daemon.support import AgentProc, base_config
from tests.support.net import free_port, wait_until

BIN = Path(sys.executable).parent
JOURNAL_LINE = re.compile(r"^<[0-7]>[\w.\-]+: ")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.\-]+: ")


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def journal_stream_of(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("program", ["edgefleet-agent", "edgefleet-server", "edgefleet"])
def test_version(program: str) -> None:
    done = run(program, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{program} {package_version()} (Python ") and done.stdout.count("\n") == 1


def test_agent_config_error_exits_2_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device_id: cam-01\nmqtt: {hots: broker}\n")
    done = run("edgefleet-agent", "run", "--config", str(config))
    assert done.returncode == 2  # the unit's RestartPreventExitStatus=2: no restart loop
    assert done.stderr == f"edgefleet-agent: {config}: unknown key 'mqtt.hots'\n"


def test_server_config_error_exits_2_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("listen: 127.0.0.1:8080\ndatabase_url: sqlite:///x.db\nsigning_kee: /x\n")
    done = run("edgefleet-server", "run", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr == f"edgefleet-server: {config}: unknown key 'signing_kee'\n"
    missing = run("edgefleet-server", "run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("edgefleet-server: cannot read config ")


def test_usage_errors_exit_2() -> None:
    for program in ("edgefleet-agent", "edgefleet-server", "edgefleet"):
        done = run(program, "no-such-command")
        assert done.returncode == 2 and "Traceback" not in done.stderr, (program, done.stderr)


def test_agent_on_a_taken_port_names_the_address(tmp_path: Path, taken_port: int) -> None:
    agent = AgentProc(tmp_path, base_config(tmp_path, None, api={"listen": f"127.0.0.1:{taken_port}"}))
    agent.start(wait_ready=False)
    assert agent.proc is not None
    assert agent.proc.wait(timeout=60) == 1
    log = agent.log()
    assert "Traceback" not in log, log
    assert f"cannot start: cannot listen on 127.0.0.1:{taken_port} (api.listen): address already in use" in log


def server_config(tmp_path: Path, port: int, **extra: object) -> Path:
    from edgefleet.server.cli import init

    path = init(tmp_path / "server", listen=f"127.0.0.1:{port}", force=True)
    config = yaml.safe_load(path.read_text())
    config["mqtt"]["enabled"] = False
    config.update(extra)
    path.write_text(yaml.safe_dump(config))
    return path


def test_server_on_a_taken_port_names_the_address(tmp_path: Path, taken_port: int) -> None:
    done = run("edgefleet-server", "run", "--config", str(server_config(tmp_path, taken_port)))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        f"edgefleet-server: cannot listen on 127.0.0.1:{taken_port} (listen): address already in use"]


def agent_lines(agent: AgentProc) -> list[str]:
    wait_until(lambda: "ready" in agent.log(), timeout=30)
    agent.terminate(timeout=10)
    return [line for line in agent.log().splitlines() if line.strip()]


def test_agent_logs_journal_lines_when_stderr_is_the_journal(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.touch()
    config = {**base_config(tmp_path, None, log_level="INFO"), "model": {"path": str(tmp_path / "missing.onnx")}}
    agent = AgentProc(tmp_path, config, env={"JOURNAL_STREAM": journal_stream_of(log)}).start(wait_ready=False)
    lines = agent_lines(agent)
    assert lines and all(JOURNAL_LINE.match(line) for line in lines), lines
    priorities = {line[1] for line in lines}
    assert "6" in priorities and priorities & {"3", "4"}, lines  # info, and the missing model's warning/error
    assert not any(TEXT_LINE.match(line[3:]) for line in lines)  # no second timestamp


def test_agent_logs_text_when_the_journal_stream_is_another_file(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.touch()
    agent = AgentProc(tmp_path, base_config(tmp_path, None, log_level="INFO"),
                      env={"JOURNAL_STREAM": journal_stream_of(other)}).start(wait_ready=False)
    lines = agent_lines(agent)
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines


def test_agent_logs_json_lines(tmp_path: Path) -> None:
    agent = AgentProc(tmp_path, base_config(tmp_path, None, log_level="INFO", log={"format": "json"})).start(
        wait_ready=False)
    documents = [json.loads(line) for line in agent_lines(agent)]
    assert documents and all(set(d) >= {"ts", "level", "logger", "message"} for d in documents)
    assert any(d["logger"] == "agent.daemon" and " ready: " in d["message"] for d in documents)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", d["ts"]) for d in documents)


def test_operator_variables_do_not_stop_the_agent(tmp_path: Path) -> None:
    env = {"EDGEFLEET_URL": "http://127.0.0.1:9", "EDGEFLEET_ADMIN_TOKEN": "operator-secret",
           "EDGEFLEET_SERVER_LISTEN": "0.0.0.0:1", "EDGEFLEET_API__MAX_BODY_MB": "4"}
    agent = AgentProc(tmp_path, base_config(tmp_path, None), env=env).start()
    try:
        assert agent.get("/v1/health").status_code in (200, 503)
    finally:
        agent.terminate(timeout=10)


def test_server_logs_journal_lines_when_stderr_is_the_journal(tmp_path: Path) -> None:
    port = free_port()
    config = server_config(tmp_path, port, log_level="INFO")
    log = tmp_path / "server.log"
    with log.open("wb") as handle:
        env = {**os.environ, "JOURNAL_STREAM": journal_stream_of(log),
               "EDGEFLEET_URL": f"http://127.0.0.1:{port}", "EDGEFLEET_ADMIN_TOKEN": "operator-secret"}
        proc = subprocess.Popen([str(BIN / "edgefleet-server"), "run", "--config", str(config)], stdout=handle,
                                stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: _healthy(port) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(JOURNAL_LINE.match(line) for line in lines), lines
    assert any(line.startswith("<6>uvicorn.error: Application startup complete") for line in lines), lines


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_server_takes_its_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    """As under LoadCredential=: the admin token and the signing key come from $CREDENTIALS_DIRECTORY."""
    port = free_port()
    config = server_config(tmp_path, port)
    document = yaml.safe_load(config.read_text())
    key = Path(document.pop("signing_key"))
    document.pop("admin_token")
    config.write_text(yaml.safe_dump(document))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "admin_token").write_text("token-from-a-credential\n")
    key.rename(credentials / "signing_key")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    log = tmp_path / "server.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen([str(BIN / "edgefleet-server"), "run", "--config", str(config)], stdout=handle,
                                stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: _healthy(port) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        url = f"http://127.0.0.1:{port}/v1/models"
        assert requests.get(url, headers={"Authorization": "Bearer token-from-a-credential"}, timeout=5).ok
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)

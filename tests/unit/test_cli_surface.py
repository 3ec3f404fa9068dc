"""What every program's command line promises: help on every option, plain-text help, shell completion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.cli import build_parser as agent_parser
from edgefleet.server.cli import build_parser as server_parser
from edgefleet.server.demo import build_parser as demo_parser
from edgefleet.server.opcli import build_parser as operator_parser

BIN = Path(sys.executable).parent
PARSERS = {"edgefleet-agent": agent_parser, "edgefleet-server": server_parser, "edgefleet": operator_parser,
           "edgefleet-demo": demo_parser}


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_every_option_and_command_has_help(program: str) -> None:
    missing = []
    for path, parser in walk(PARSERS[program](), program):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_help_is_plain_text(program: str) -> None:
    done = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {program} ")
    for markup in ("``", ":class:", ":func:", ".. "):
        assert markup not in done.stdout, markup


def test_operator_help_documents_the_exit_codes() -> None:
    text = operator_parser().format_help()
    for line in ("3  not found (HTTP 404)", "4  no or wrong token (HTTP 401/403)", "7  the server cannot be reached"):
        assert line in text


def complete(program: str, line: str, tmp_path: Path) -> list[str]:
    """Ask the installed program for completions the way bash's argcomplete hook does."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    done = subprocess.run([str(BIN / program)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return [word.strip() for word in out.read_text().split("\n")]


def test_shell_completion(tmp_path: Path) -> None:
    assert set(complete("edgefleet", "edgefleet ", tmp_path)) >= {"model", "rollout", "devices", "telemetry"}
    assert "push" in complete("edgefleet", "edgefleet model pu", tmp_path)
    assert "--token-file" in complete("edgefleet", "edgefleet --tok", tmp_path)
    assert set(complete("edgefleet-agent", "edgefleet-agent ", tmp_path)) >= {"run", "probe", "bench", "infer"}
    assert "--data-dir" in complete("edgefleet-server", "edgefleet-server init --d", tmp_path)

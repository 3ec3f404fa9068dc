"""Everything is imported as edgefleet.agent / edgefleet.server, never as a bare `agent` or `server`.

The wheel installs one top-level package, `edgefleet`; a bare ``import server`` would work only from a
checkout (the repository root on sys.path) and would load a second copy of every module it touches.
"""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["agent", "server", "tests", "benchmarks", "scripts"]
MODULE_FLAG = re.compile(r"[\"']-m[\"'],\s*[\"'](agent|server)\.")


def python_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in ("agent", "server")]
    return found


def test_no_module_imports_a_bare_agent_or_server() -> None:
    files = python_files()
    assert len(files) > 200
    found = [hit for path in files for hit in bare_imports(path)]
    found += [f"{path.relative_to(ROOT)}: python -m {flag.group(1)}." for path in files
              for flag in MODULE_FLAG.finditer(path.read_text())]
    assert found == []


def test_the_namespace_links_to_the_folders() -> None:
    assert (ROOT / "edgefleet" / "agent" / "wire.py").resolve() == (ROOT / "agent" / "wire.py").resolve()
    assert (ROOT / "edgefleet" / "server" / "app.py").resolve() == (ROOT / "server" / "app.py").resolve()
    import edgefleet.agent.wire
    import edgefleet.server.app

    assert edgefleet.agent.wire.__name__ == "edgefleet.agent.wire" and edgefleet.server.app.create_app


@pytest.mark.install
def test_the_wheel_holds_only_the_edgefleet_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"edgefleet"}
    assert "edgefleet/agent/wire.py" in names and "edgefleet/server/db/migrations/env.py" in names

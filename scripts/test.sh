#!/usr/bin/env bash
# The test command: install, lint, type-check, run the suite against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all
echo "== ruff"; .venv/bin/ruff check agent server tests benchmarks
echo "== mypy"; .venv/bin/mypy
echo "== import contracts"; .venv/bin/lint-imports --no-cache
# Three workers on CI's two cores: most tests wait on brokers, servers and agents. A file stays on one worker
# (its module fixtures are started once); PYTEST_WORKERS=0 runs it in this process.
workers="${PYTEST_WORKERS:-3}"
echo "== pytest ($workers workers)"; .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"

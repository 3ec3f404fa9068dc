#!/usr/bin/env bash
# The test command: install, lint, type-check, run the suite against real parts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all
echo "== ruff"; .venv/bin/ruff check agent server tests benchmarks
echo "== mypy"; .venv/bin/mypy
echo "== import contracts"; .venv/bin/lint-imports --no-cache
echo "== pytest"; .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Create .venv and install edgefleet with the given extras (default: all). Re-runs only when
# pyproject.toml or the extras changed. Needs only Python 3.10+ and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp=".venv/.edgefleet-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [[ "$extras" == *all* || "$extras" == *torch* ]]; then
  # Pinned so pip takes the wheel already on this machine's disk (here 2.13.0+cpu, an x86_64 CPU
  # build), not a newer multi-GB download. PyPI's own torch wheels are CUDA builds on x86_64 and on
  # aarch64 alike; the latter do not install on a Raspberry Pi (see docs/targets.md).
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "$want" > "$stamp"

#!/usr/bin/env bash
# The main job: server + broker + a few agents, a model pushed, optimized and rolled out in waves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh agent,server
exec .venv/bin/edgefleet-demo "$@"

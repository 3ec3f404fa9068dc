#!/usr/bin/env bash
# Where the update server's CPU goes during a pushed rollout: benchmarks/fleet_sim.py with py-spy on the server.
#   bash scripts/profile-push.sh [DEVICES] [SECONDS] [OUT_DIR]   (defaults: 1000 devices, 90 s, ./.bench/profile)
# Writes OUT_DIR/server.raw (py-spy's collapsed stacks: one "frame;frame;... count" line a stack), the simulator's
# --json document and its log. py-spy needs ptrace rights on the server (root, or ptrace_scope 0).
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-1000}" seconds="${2:-90}" out="${3:-.bench/profile}"
mkdir -p "$out"
.venv/bin/python benchmarks/fleet_sim.py --devices "$devices" --poll 600 --push --steady 10 --soak 10 --json \
  > "$out/fleet_sim.json" 2> "$out/fleet_sim.log" &
sim=$!
pid=""
for _ in $(seq 120); do
  pid="$(pgrep -f "edgefleet.server.cli run" | head -1 || true)"
  [ -n "$pid" ] && break
  sleep 1
done
[ -n "$pid" ] || { echo "no server process appeared" >&2; kill "$sim" 2>/dev/null; exit 1; }
# the rollout starts right after the simulator's steady window
until grep -q "steady" "$out/fleet_sim.log" 2>/dev/null; do
  kill -0 "$sim" 2>/dev/null || { echo "fleet_sim ended before its rollout" >&2; exit 1; }
  sleep 1
done
.venv/bin/py-spy record -p "$pid" -d "$seconds" -r 100 -f raw -o "$out/server.raw" --nonblocking
wait "$sim"
echo "profile: $out/server.raw; figures: $out/fleet_sim.json"

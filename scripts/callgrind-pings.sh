#!/usr/bin/env bash
# Instructions a one-shard node spends answering pipelined PINGs (callgrind counts do not move
# with the host's noise: compare two builds with them).
# Usage: scripts/callgrind-pings.sh [VALKYRIE_BINARY] [CONNECTIONS BATCH ROUNDS]
#   default: target/release/valkyrie, 1 connection, batches of 1000, 50 rounds
# Needs valgrind and python3. Counts only while the flood runs (callgrind_control -z / -d).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/valkyrie}"
conns="${2:-1}" batch="${3:-1000}" rounds="${4:-50}"
port=$((20000 + RANDOM % 20000))
out="$(mktemp -d)"
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
  "$bin" node --listen "tcp://127.0.0.1:$port" --shards 1 >"$out/node.log" 2>&1 &
vg=$!
trap 'kill -9 $vg 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q listening "$out/node.log" && break; sleep 0.5; done
python3 scripts/ping-flood.py "$port" 1 10 1 >/dev/null   # warm up
callgrind_control -z "$vg" >/dev/null
python3 scripts/ping-flood.py "$port" "$conns" "$batch" "$rounds"
callgrind_control -d "$vg" >/dev/null
sleep 1
total=$(callgrind_annotate "$(ls -t "$out"/callgrind.* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
pings=$((conns * batch * rounds))
echo "$total instructions for $pings PINGs: $((total / pings)) per PING (profile in $out)"

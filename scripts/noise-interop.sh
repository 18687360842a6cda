#!/usr/bin/env bash
# noise_xk interop check: Python's noiseprotocol package against a Valkyrie node.
# Builds valkyrie, makes keys, starts a node with --security noise_xk, runs
# scripts/noise-interop.py in a throw-away virtualenv, stops the node.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p valkyrie-cli
V="${CARGO_TARGET_DIR:-target}/release/valkyrie"
D="$(mktemp -d)"
trap 'kill "${NODE:-0}" 2>/dev/null || true; rm -rf "$D"' EXIT
python3 -m venv "$D/venv"
"$D/venv/bin/pip" install -q noiseprotocol msgpack
"$V" keygen noise "$D/node" >/dev/null
"$V" keygen noise "$D/client" >/dev/null
cp "$D/client.pub" "$D/allowed"
PORT="${PORT:-7491}"
"$V" node --listen "tcp://127.0.0.1:$PORT" --shards 1 --security noise_xk \
  --noise-key "$D/node.key" --allow-keys "$D/allowed" 2>"$D/node.log" &
NODE=$!
for _ in $(seq 50); do
  (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
"$D/venv/bin/python" scripts/noise-interop.py "127.0.0.1:$PORT" "$D/node.pub" "$D/client.key"

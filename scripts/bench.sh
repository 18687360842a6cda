#!/usr/bin/env bash
# Run the full benchmark suite and keep the report with a timestamp.
# Usage: scripts/bench.sh [extra valkyrie-bench arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
cargo build --release -q -p valkyrie-bench
target/release/valkyrie-bench --full --json "bench-results/$stamp.json" "$@" | tee "bench-results/$stamp.txt"
echo "kept bench-results/$stamp.json and bench-results/$stamp.txt"

#!/usr/bin/env bash
# mtls interop check: `openssl s_client` (an independent TLS 1.3 implementation) against a
# Valkyrie node started with --security mtls. Builds valkyrie, makes a development PKI with
# `valkyrie keygen ca|cert`, starts the node, runs scripts/mtls-interop.py, stops the node.
# Needs only python3 and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p valkyrie-cli
V="${CARGO_TARGET_DIR:-target}/release/valkyrie"
D="$(mktemp -d)"
trap 'kill "${NODE:-0}" 2>/dev/null || true; rm -rf "$D"' EXIT
"$V" keygen ca "$D/ca" >/dev/null
"$V" keygen cert "$D/node" --ca "$D/ca" --subject 127.0.0.1 --role server >/dev/null
"$V" keygen cert "$D/agent" --ca "$D/ca" --subject agent-7 --role client >/dev/null
"$V" keygen ca "$D/rogue-ca" >/dev/null
"$V" keygen cert "$D/rogue" --ca "$D/rogue-ca" --subject agent-7 --role client >/dev/null
PORT="${PORT:-7492}"
"$V" node --listen "tcp://127.0.0.1:$PORT" --shards 1 --security mtls \
  --tls-cert "$D/node.crt" --tls-key "$D/node.key" --tls-ca "$D/ca.crt" \
  --audit "$D/audit.log" --ban-after 0 2>"$D/node.log" &
NODE=$!
for _ in $(seq 50); do
  (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
python3 scripts/mtls-interop.py "127.0.0.1:$PORT" "$D"
grep -q '"identity":"x509:agent-7"' "$D/audit.log"
grep -q '"event":"auth_failure","mode":"tls"' "$D/audit.log"
echo "mtls interop: audit log records the certificate identity and the refusals: ok"

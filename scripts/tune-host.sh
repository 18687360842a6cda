#!/usr/bin/env bash
# Apply the 1M-connection host profile (root), then report what the host can hold.
# Usage: scripts/tune-host.sh [profile.sysctl.conf]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-tuning/profiles/1m-connections.sysctl.conf}"
if [ "$(id -u)" -ne 0 ]; then
  echo "tune-host.sh: needs root to apply $profile" >&2
  exit 1
fi
# Apply line by line so that a key this kernel lacks (e.g. conntrack not loaded) is reported,
# not fatal.
grep -Ev '^\s*(#|$)' "$profile" | while IFS= read -r line; do
  sysctl -w "$(echo "$line" | tr -d ' ')" >/dev/null 2>&1 || echo "skipped: $line"
done
echo "applied $profile"
echo "open-file limit of this shell: $(ulimit -Sn) soft / $(ulimit -Hn) hard"
echo "to raise it: install tuning/profiles/limits.conf as /etc/security/limits.d/valkyrie.conf (needs a new login), or LimitNOFILE= in a systemd unit"
cargo run --release -q -p valkyrie-cli -- tune check

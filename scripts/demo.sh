#!/usr/bin/env bash
# Run the end-to-end demo. It builds network namespaces, veths and tc mirrors, so it needs root:
# re-run under sudo when started as another user.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    exec sudo -- "$0" "$@"
fi
exec .venv/bin/shadowtap demo "$@"

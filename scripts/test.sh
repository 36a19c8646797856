#!/usr/bin/env bash
# Run the whole test suite (lint included). Tests needing root or ../shared/corpus skip visibly
# when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check replay netconfig appliance tests bench examples
exec .venv/bin/python -m pytest "$@"

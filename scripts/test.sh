#!/usr/bin/env bash
# Run the whole test suite (lint included). Tests needing root or ../shared/corpus skip visibly
# when those are absent.
#
# Then a second, short pass: the core TCP and HTTP/1 tests once more on the pure-Python
# definition (SHADOWTAP_PURE_PYTHON=1: no C fast path, no compiled modules), so the clean cases
# hold for both implementations, not only for the one that runs by default (the C fast path).
# A failure in either pass fails the script (the first pass's exit code wins).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check replay netconfig appliance tests bench examples
PURE_PYTHON_TESTS=(
    tests/test_tcp.py tests/test_tcp_fuzz.py
    tests/test_http1.py tests/test_http1_states.py tests/test_http1_framing.py
    tests/test_http1_framing_fuzz.py tests/test_http1_fuzz.py
    tests/test_fastpath.py tests/test_extract_truth.py tests/test_smuggled.py
    tests/test_vs_tshark.py tests/test_vs_tshark_smuggling.py
)
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
echo "== second pass: core TCP/HTTP/1 tests, pure Python (SHADOWTAP_PURE_PYTHON=1) =="
pure_rc=0
SHADOWTAP_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
    "${PURE_PYTHON_TESTS[@]}" || pure_rc=$?
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi
exit "$pure_rc"

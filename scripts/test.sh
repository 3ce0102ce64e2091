#!/usr/bin/env bash
# Create (or reuse) a virtualenv, install the project with its test extras, and run the
# whole test suite. Every I/O test runs on both engines (std-fs and trio-uring) through
# one fixture. Extra arguments go to pytest.
#
#   VENV=path   virtualenv to use (default .venv; .ci/run passes a fresh one)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test]'
set +e
"$VENV/bin/python" -m pytest -n 2 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"

#!/usr/bin/env bash
# Installs dist-al with its test dependencies into .venv and runs the whole test suite.
# The CPU build of torch is pinned here only (CI and dev machines have no GPU);
# pyproject keeps torch open so GPU users get their CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[test]'
exec .venv/bin/python -m pytest "$@"

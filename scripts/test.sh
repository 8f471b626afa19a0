#!/usr/bin/env bash
# Installs dist-al with its test and dev dependencies into .venv and runs the test suite; arguments go to pytest.
#   bash scripts/test.sh                   the whole suite (what CI runs)
#   bash scripts/test.sh -m "not slow"     the fast tier: no test over ~2 s (README, "Tests")
#   bash scripts/test.sh --checks -q       first ruff, mypy and the docs build (scripts/check.sh), as CI does
#   DIST_AL_TEST_WORKERS=1 bash scripts/test.sh ...   one pytest process (default 2, pytest-xdist; a test module's
#                                                     tests stay in one process with its module fixtures)
# The CPU build of torch is pinned here only (CI and dev machines have no GPU);
# pyproject keeps torch open so GPU users get their CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[test,dev]'
if [ "${1:-}" = "--checks" ]; then
    shift
    bash scripts/check.sh
fi
# 2 processes: measured on the 2-core CI machine, the slow tier runs 1.6x faster than in one (its Ray and
# subprocess start-ups leave the CPUs 42-47% idle) and the CPUs are then 84-88% busy (README, "Tests").
WORKERS="${DIST_AL_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 1 ]; then
    set -- -n "$WORKERS" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Installs dist-al with its test and dev dependencies into .venv and runs the test suite; arguments go to pytest.
#   bash scripts/test.sh                   the whole suite (what CI runs)
#   bash scripts/test.sh -m "not slow"     the fast tier: no test over ~2 s (README, "Tests")
#   bash scripts/test.sh --checks -q       first ruff, mypy and the docs build (scripts/check.sh), as CI does
#   DIST_AL_TEST_WORKERS=1 bash scripts/test.sh ...   one pytest process (default 3, pytest-xdist; a test module's
#                                                     tests stay in one process with its module fixtures)
# The CPU build of torch is pinned here only (CI and dev machines have no GPU);
# pyproject keeps torch open so GPU users get their CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The labelstudio tests' server (tests/lsserver.py, standard library only): where this machine has none yet,
# install it and migrate its database in the background while dist-al installs and the checks run, instead of
# in the first Label Studio test (minutes on a fresh machine, as in CI). A run that picks a tier with -m skips
# this; its first Label Studio test, if any, does it.
case " $* " in
    *" -m "*) ;;
    *) "$PYTHON" tests/lsserver.py > "${TMPDIR:-/tmp}/dist-al-label-studio-prepare.log" 2>&1 & ;;
esac
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[test,dev]'
if [ "${1:-}" = "--checks" ]; then
    shift
    bash scripts/check.sh
fi
# 3 processes on the 2-core CI machine: the tests wait on Ray and subprocess start-ups, so one process keeps the CPUs
# ~60% busy and two 87%; three keep them 96% busy and ran the suite in 633 s against 682 s for two, one run after
# the other (README, "Tests").
WORKERS="${DIST_AL_TEST_WORKERS:-3}"
if [ "$WORKERS" -gt 1 ]; then
    set -- -n "$WORKERS" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Installs dist-al into .venv and runs the main job on the embedded default (no cloud, no cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c scripts/constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e .
exec .venv/bin/dist-al demo "$@"

#!/usr/bin/env bash
# Lint, format, types and the documentation site, as CI runs them before the tests (.ci/run). Uses the tools
# that scripts/test.sh installs into .venv (the dev extra, pinned in scripts/constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check dist_al tests scripts
.venv/bin/ruff format --check dist_al tests scripts
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet   # warnings are errors; the site goes to site/ (ignored)
echo "checks passed: ruff check, ruff format --check, mypy, mkdocs build --strict"

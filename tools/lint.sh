#!/usr/bin/env bash
# Code-style checks, as OpenMMLab's pre-commit: flake8, isort, yapf
# (settings in .flake8 and pyproject.toml). Fails on any finding.
#
#   bash tools/lint.sh          # check
#   bash tools/lint.sh --fix    # rewrite imports and formatting in place
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MMFCA_VENV:-.venv}/bin/python"
PATHS=(mmfca tools tests demo configs)

if [ "${1:-}" = "--fix" ]; then
  "$PY" -m isort "${PATHS[@]}"
  "$PY" -m yapf -r -i "${PATHS[@]}"
fi
"$PY" -m flake8 "${PATHS[@]}"
"$PY" -m isort --check-only --diff "${PATHS[@]}"
"$PY" -m yapf -r --diff "${PATHS[@]}"
echo "lint: clean"

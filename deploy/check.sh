#!/usr/bin/env bash
# Everything CI checks, in the order that fails fastest: lint, format, types, then the tests (extra
# arguments go to pytest: bash deploy/check.sh tests/unit). Run after bash deploy/install.sh --dev.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest -q "$@"

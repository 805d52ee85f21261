#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml (run after changing a dependency):
#   runtime.lock  what the container image installs (the exporter alone)
#   test.lock     what CI and development install (runtime + the test and bench extras)
# Both are resolved for CPython 3.11 on Linux, the version CI tests and the image runs.
set -euo pipefail
cd "$(dirname "$0")/.."
uv() { if command -v uv >/dev/null; then command uv "$@"; else python3 -m uv "$@"; fi; }
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet --no-header --annotation-style line)
uv pip compile pyproject.toml "${common[@]}" -o requirements/runtime.lock
uv pip compile pyproject.toml "${common[@]}" --extra test --extra bench -o requirements/test.lock

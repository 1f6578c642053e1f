#!/usr/bin/env bash
# Install ggcompress with every extra into ./.venv, fetch the real-model fixtures, lint, run all tests.
# This is the README's test command and what CI runs (.ci/run). Works on a fresh machine (PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch is pinned <2.14 in pyproject so pip takes the CPU wheel, not a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
.venv/bin/python -m ggcompress.fixtures all
.venv/bin/ruff check ggcompress tests benchmarks examples
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"

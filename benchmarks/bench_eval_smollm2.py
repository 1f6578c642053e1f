"""Real `ggcompress eval` run: SmolLM2-135M on the Wikipedia validation text, vs an fp8 copy of itself.

Prints the exact command, lm-eval's perplexity (ggc_perplexity), ggcompress's own perplexity, the KL
block and the time per model. The second model is the same checkpoint with every linear weight
rounded to float8 e4m3 (one absmax scale per output row; embeddings kept), so the KL numbers show
what a real 8-bit weight rounding costs; `--variant none` evaluates the baseline alone.

    .venv/bin/python benchmarks/bench_eval_smollm2.py            # ~5-8 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_eval_smollm2.py --limit 8 --max-tokens 8192   # whole text, slower

The fixture's weights come from a Q4_1 GGUF (see ggcompress.fixtures): a real, working LM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ggcompress import fixtures
from ggcompress.cli.eval import render_markdown


def fp8_copy(src: Path, dst: Path) -> int:
    """Copy an HF folder with its 2-D linear weights rounded through float8 e4m3 (per-row absmax)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "fixture.json"))
    tensors = load_file(src / "model.safetensors")
    fmax = torch.finfo(torch.float8_e4m3fn).max
    rounded = 0
    for name, w in tensors.items():
        if w.ndim == 2 and "embed" not in name:
            w32 = w.float()
            scale = w32.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / fmax  # (out, 1)
            tensors[name] = ((w32 / scale).to(torch.float8_e4m3fn).float() * scale).to(w.dtype)
            rounded += 1
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return rounded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="1", help="documents (articles) for ggc_perplexity (default 1)")
    parser.add_argument("--max-tokens", default="2048", help="tokens for the KL comparison (default 2048)")
    parser.add_argument("--max-length", default="2048", help="lm-eval rolling window (default 2048)")
    parser.add_argument("--variant", choices=["fp8", "none"], default="fp8")
    args = parser.parse_args()

    model = fixtures.smollm2()
    _, validation = fixtures.text()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        models = [str(model)]
        if args.variant == "fp8":
            variant = Path(tmp) / "smollm2-fp8-e4m3"
            n = fp8_copy(model, variant)
            print(f"fp8 copy: {n} linear weights rounded to float8 e4m3 (per-row absmax scale)")
            models.append(str(variant))
        cmd = [sys.executable, "-m", "ggcompress", "eval", *models, "--text", str(validation),
               "--tasks", "ggc_perplexity", "--limit", args.limit, "--max-length", args.max_length,
               "--max-tokens", args.max_tokens, "--json"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    report = json.loads(proc.stdout)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("command:", shlex.join(["ggcompress", *cmd[3:]]))
    text = report["text"]
    print(f"text: {report['config']['text']} -> KL over {text['tokens']} tokens ({text['windows']} windows "
          f"of {text['window']})")
    for row in report["models"]:
        ppl = row["tasks"]["ggc_perplexity"]
        m = {k: v["value"] for k, v in ppl["metrics"].items()}
        t, secs = row["text"], row["seconds"]
        role = " (baseline)" if row["baseline"] else ""
        print(f"\n{row['label']}{role}: {row['parameters'] / 1e6:.1f}M params, {row['dtype']}")
        print(f"  ggc_perplexity ({ppl['samples']} doc): word ppl {m['word_perplexity']:.3f}, "
              f"byte ppl {m['byte_perplexity']:.5f}, bits/byte {m['bits_per_byte']:.5f}")
        print(f"  own: ppl {t['ppl']:.4f}, ppl ratio {t['ppl_ratio']:.5f}, KL mean {t['kl_mean']:.3e}, "
              f"median {t['kl_median']:.3e}, p99 {t['kl_p99']:.3e}, max {t['kl_max']:.3e}, "
              f"same top-1 {100 * t['same_top1']:.2f}%")
        print(f"  recovery (worst) {100 * row['recovery']:.3f}%   time: load {secs['load']:.1f}s, "
              f"lm-eval {secs['tasks']:.1f}s, KL {secs['text']:.1f}s")
    print(f"total wall time: {wall:.1f}s\n")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What RF8 costs in quality against E4M3 / E5M2 / INT8 on real models, measured through the command's code.

Three parts (all by default; pick with --parts):

- ``sqnr``: aggregate SQNR of every format x granularity on the weights ``quantize-rf8`` quantizes by
  default (the linear layers), from ``compare_formats`` — the numbers ``quantize-rf8 --compare`` shows.
  (Codec-level SQNR over all 2-D tensors incl. embeddings and the RF8 rounding/bias variants is
  benchmarks/bench_formats_sqnr.py.)
- ``eval``: SmolLM2-135M quantized with ``quantize-rf8`` (channel scales) per format, then
  ``ggcompress.integrations.evaluation.evaluate`` against the unquantized model on the real validation text:
  perplexity, its ratio, KL mean/median/p99 and same top-1. Target: RF8 perplexity within 1%.
- ``cosine``: all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm, as sentence-transformers
  configures this model) of real validation sentences, each quantized model vs the original.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf8_quality.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf8_quality.py --parts eval --max-tokens 8192

SmolLM2's fixture weights are dequantized Q4_1 (a 4-bit lattice), not a natural distribution.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ggcompress import fixtures
from ggcompress.formats.quantize import QuantizeConfig, compare_formats, quantize_checkpoint
from ggcompress.integrations.evaluation import EvalOptions, evaluate
from ggcompress.io.quantized import load_quantized

GRANULARITIES = ("tensor", "channel", "block:128")


def header() -> str:
    return (f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d')}")


def part_sqnr(models: list[str]) -> None:
    print("\n## SQNR (dB) of the linear weights quantize-rf8 selects by default, per format x granularity")
    for name in models:
        path = getattr(fixtures, name)()
        rows: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        for g in GRANULARITIES:
            for fmt, totals in compare_formats(path, QuantizeConfig(granularity=g)).items():
                rows.setdefault(fmt, {})[g] = totals["sqnr_db"]
        print(f"\n{name} ({path}), {time.perf_counter() - t0:.0f} s")
        print(f"| format | {' | '.join(GRANULARITIES)} |\n|---|{'---:|' * len(GRANULARITIES)}")
        for fmt, by_g in rows.items():
            print(f"| {fmt} | " + " | ".join(f"{by_g[g]:.2f}" for g in GRANULARITIES) + " |")


def part_eval(formats: list[str], granularity: str, max_tokens: int, window: int, work: Path) -> None:
    base = fixtures.smollm2()
    _, validation = fixtures.text()
    models = [str(base)]
    for fmt in formats:
        out = work / f"smollm2-{fmt}"
        t0 = time.perf_counter()
        quantize_checkpoint(base, out, QuantizeConfig(format=fmt, granularity=granularity))
        print(f"quantized {fmt}: {time.perf_counter() - t0:.1f} s -> {out}")
        models.append(str(out))
    t0 = time.perf_counter()
    report = evaluate(models, EvalOptions(tasks=(), text=validation, max_tokens=max_tokens, window=window))
    text = report["text"]
    print(f"\n## SmolLM2-135M perplexity / KL vs unquantized ({granularity} scales), "
          f"{text['tokens']} tokens of {validation} ({text['windows']} windows of {text['window']}), "
          f"fp32 compute, {time.perf_counter() - t0:.0f} s")
    print("equivalent command: ggcompress eval " + " ".join(models) +
          f" --tasks none --text {validation} --max-tokens {max_tokens} --window {window}")
    print("| model | kind | ppl | ppl ratio | KL mean | KL median | KL p99 | same top-1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in report["models"]:
        t = row["text"]
        print(f"| {row['label']} | {row['kind']} | {t['ppl']:.4f} | {t['ppl_ratio']:.5f} | "
              f"{t['kl_mean']:.2e} | {t['kl_median']:.2e} | {t['kl_p99']:.2e} | "
              f"{100 * t['same_top1']:.2f}% |")
    rf8 = next((r for r in report["models"] if r["label"].endswith("-rf8")), None)
    if rf8 is not None:
        ratio = rf8["text"]["ppl_ratio"]
        verdict = "meets" if ratio <= 1.01 else "MISSES"
        print(f"RF8 perplexity ratio {ratio:.5f}: {verdict} the target (within 1% of unquantized)")


def sentences(n: int) -> list[str]:
    """The first ``n`` sentences of 6-60 words of the validation text (one per line after splitting)."""
    _, validation = fixtures.text()
    out: list[str] = []
    for para in validation.read_text(encoding="utf-8").splitlines():
        for s in para.replace("? ", ". ").replace("! ", ". ").split(". "):
            if 6 <= len(s.split()) <= 60:
                out.append(s.strip())
                if len(out) == n:
                    return out
    return out


def embed(model, tok, texts: list[str], batch: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden states (the model's sentence-transformers pooling)."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state  # (B, T, C)
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1)
            outs.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(outs)


def part_cosine(formats: list[str], granularity: str, n: int, work: Path) -> None:
    base = fixtures.minilm()
    texts = sentences(n)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ref = embed(AutoModel.from_pretrained(base, dtype=torch.float32).eval(), tok, texts)
    print(f"\n## all-MiniLM-L6-v2 sentence-embedding cosine vs the original ({len(texts)} validation "
          f"sentences, {granularity} scales, fp32)")
    print("| format | mean | min | 1st percentile | 1 - mean |\n|---|---:|---:|---:|---:|")
    for fmt in formats:
        out = work / f"minilm-{fmt}"
        quantize_checkpoint(base, out, QuantizeConfig(format=fmt, granularity=granularity))
        model, _ = load_quantized(out)
        cos = (embed(model, tok, texts) * ref).sum(-1).double()
        print(f"| {fmt} | {cos.mean():.6f} | {cos.min():.6f} | {torch.quantile(cos, 0.01):.6f} | "
              f"{1 - cos.mean():.2e} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sqnr,eval,cosine")
    ap.add_argument("--models", default="minilm,smollm2", help="fixtures for the sqnr part")
    ap.add_argument("--formats", default="rf8,fp8_e4m3,int8", help="formats for eval and cosine")
    ap.add_argument("--granularity", default="channel", help="granularity for eval and cosine")
    ap.add_argument("--max-tokens", type=int, default=4096, help="tokens of validation text for eval")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    formats = [f for f in args.formats.split(",") if f]
    print(header())
    with tempfile.TemporaryDirectory(prefix="bench-rf8-") as tmp:
        if "sqnr" in parts:
            part_sqnr([m for m in args.models.split(",") if m])
        if "eval" in parts:
            part_eval(formats, args.granularity, args.max_tokens, args.window, Path(tmp))
        if "cosine" in parts:
            part_cosine(formats, args.granularity, args.sentences, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

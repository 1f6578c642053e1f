"""The library behind the CLI, end to end on the real fixtures (about 2 minutes on 2 CPU cores).

analyze MiniLM → quantize SmolLM2 to RF8 and INT8 → pack it with rANS → evaluate what ships
(KL / same-top-1 / perplexity ratio vs the original) — every step returns plain data.

    .venv/bin/python examples/library_tour.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ggcompress import fixtures
from ggcompress.codec.pack import PackOptions, pack
from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
from ggcompress.integrations.evaluation import EvalOptions, evaluate
from ggcompress.stats.analyze import AnalyzeOptions, analyze


def main() -> None:
    torch.set_num_threads(1)
    minilm, smollm2 = fixtures.minilm(), fixtures.smollm2()
    _, validation = fixtures.text()
    work = Path(tempfile.mkdtemp(prefix="ggcompress-tour-"))

    doc = analyze([str(minilm)], AnalyzeOptions(step=2**-8))
    s = doc["checkpoints"][0]["summary"]
    print(f"analyze MiniLM: β {s['beta']:.3f}, entropy {s['entropy_bits']:.2f} bits/param, "
          f"GG best on {s['best_fit_counts']['gg']}/{s['matrices']} matrices")  # fmt: skip

    for fmt in ("rf8", "int8"):
        rep = quantize_checkpoint(smollm2, work / fmt, QuantizeConfig(format=fmt, granularity="channel"))
        t = rep["checkpoints"][0]["totals"]
        print(f"quantize SmolLM2 {fmt}: SQNR {t['sqnr_db']:.2f} dB, {t['ratio']:.2f}x smaller")

    rep = pack([str(smollm2)], work / "smollm2.ggz", PackOptions(quant="step:8", coder="rans"))
    t = rep["checkpoints"][0]["summary"]
    print(f"pack SmolLM2 step 2^-8 rANS: {t['coded_bits_per_param']:.2f} bits/param, ratio {t['ratio']:.2f}x")

    for trellis in (False, True):  # rounding vs trellis-coded quantization, same SQNR
        rep = pack([str(minilm)], work / f"minilm-{trellis}.ggz", PackOptions(quant="step:8", coder="rans",
                                                                              trellis=trellis))
        t = rep["checkpoints"][0]["summary"]
        print(f"pack MiniLM step 2^-8{' --trellis' if trellis else ''}: {t['coded_bits_per_param']:.3f} "
              f"bits/param at {t['sqnr_db']:.2f} dB")

    models = [str(smollm2), str(work / "rf8"), str(work / "smollm2.ggz")]
    ev = evaluate(models, EvalOptions(tasks=(), text=validation, max_tokens=1024, window=512))
    for m in ev["models"][1:]:
        x = m["text"]
        print(f"eval {m['label']}: ppl ratio {x['ppl_ratio']:.4f}, KL mean {x['kl_mean']:.4f}, "
              f"same top-1 {100 * x['same_top1']:.1f}%")  # fmt: skip
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()

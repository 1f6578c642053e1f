"""GF-k vs standard weight formats at 3-8 bits, at equal stored bits per weight (scales + tables included).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_formats.py --json /tmp/formats.json \
        --plot docs/img/formats_sqnr.png                       # everything (~20-30 min, 1 thread)
    .venv/bin/python benchmarks/bench_formats.py --models minilm --no-kl --no-timing   # SQNR only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_formats.py --models wikilm --no-timing \
        --tokens 32768 --window 128 --json /tmp/wikilm.json      # naturally trained LM (~7 min, 1 thread)
    .venv/bin/python benchmarks/bench_formats.py --tables     # GF table designs: data vs GG vs Gaussian
    .venv/bin/python benchmarks/bench_formats.py --ablations --models minilm   # GF encoder choices
    .venv/bin/python benchmarks/bench_formats.py --render /tmp/formats.json [more.json ...] \
        --plot docs/img/formats_sqnr.png                       # tables + plot from saved results

Per format: SQNR over every linear weight (2-D, not embeddings; the per-tensor energies summed) of
all-MiniLM-L6-v2, SmolLM2-135M and (``--models wikilm``) the Llama trained here on the Wikipedia text
(``fixtures.wiki_lm()``); on the causal LMs (SmolLM2, wikilm) the KL(base || quantized) mean / p99,
same-top-1 and perplexity ratio of next-token predictions over windows of the Wikipedia validation
text (integrations/evaluation.py's ``compare_logits``; windows are cut to the model's context), with
standard errors over the windows; on MiniLM the cosine of mean-pooled sentence
embeddings vs the original; and the time to quantize SmolLM2 with ``quantize-rf8 --format gfK`` vs a
plain streaming copy of the same checkpoint. Quantized weights are decoded to dense float32 for the
forward passes (what QuantLinear computes with, minus kernel rounding).

SmolLM2's fixture weights are a dequantized Q4_1 lattice (16 levels + scale + min per block of 32),
so Q4_1 reproduces them almost exactly: rank 4-bit formats on MiniLM and wikilm (naturally trained).
wikilm is not in the default ``--models``: on a machine without its cached fixture, asking for it
trains the model first (about an hour of CPU); once cached it costs minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ggcompress import fixtures
from ggcompress.formats.baselines import RoundTrip, baseline
from ggcompress.formats.gf import GFCodec, gf_decode

Fn = Callable[[torch.Tensor], RoundTrip]

#: model name -> its fixture (called only when the model is asked for: wiki_lm may have to train).
FIXTURES: dict[str, Callable[[], Path]] = {"minilm": fixtures.minilm, "smollm2": fixtures.smollm2,
                                           "wikilm": fixtures.wiki_lm}
#: the causal LMs, scored by next-token KL / perplexity (the others by embedding cosine).
CAUSAL = ("smollm2", "wikilm")


def gf(bits: int, gran: str, design: str = "auto") -> Fn:
    def run(w: torch.Tensor) -> RoundTrip:
        q = GFCodec(bits, design=design).encode(w, gran)
        return RoundTrip(gf_decode(q), q.stored_bytes)
    return run


#: label -> (class, round trip). Classes group formats of about the same size.
FORMATS: dict[str, tuple[str, Fn]] = {
    "gf3 block:32": ("3-bit", gf(3, "block:32")),
    "int3_sym@64": ("3-bit", baseline("int3_sym@64")),
    "int3_asym@128": ("3-bit", baseline("int3_asym@128")),
    "gf4 block:32": ("4-bit", gf(4, "block:32")),
    "gf4 block:64": ("4-bit", gf(4, "block:64")),
    "nf4@64": ("4-bit", baseline("nf4@64")),
    "int4_sym@64": ("4-bit", baseline("int4_sym@64")),
    "int4_asym@128": ("4-bit", baseline("int4_asym@128")),
    "fp4 e2m1@64": ("4-bit", baseline("fp4@64")),
    "mxfp4 (gguf)": ("4-bit", baseline("mxfp4")),
    "q4_0 (gguf)": ("4-bit", baseline("q4_0")),
    "q4_1 (gguf)": ("4-bit", baseline("q4_1")),
    "gf5 block:32": ("5-bit", gf(5, "block:32")),
    "q5_0 (gguf)": ("5-bit", baseline("q5_0")),
    "int5_sym@64": ("5-bit", baseline("int5_sym@64")),
    "gf6 block:32": ("6-bit", gf(6, "block:32")),
    "int6_sym@64": ("6-bit", baseline("int6_sym@64")),
    "gf8 channel": ("8-bit", gf(8, "channel")),
    "int8 channel": ("8-bit", baseline("int8")),
    "fp8_e4m3 channel": ("8-bit", baseline("fp8_e4m3")),
    "rf8 channel": ("8-bit", baseline("rf8")),
    "gf8 block:32": ("8-bit", gf(8, "block:32")),
    "q8_0 (gguf)": ("8-bit", baseline("q8_0")),
}


def linear_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every 2-D float weight that is not an embedding table, as float32."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = fh.get_tensor(key)
                if t.ndim == 2 and t.is_floating_point() and "embed" not in key and min(t.shape) > 1:
                    out[key] = t.float()
    return out


def round_trip_all(weights: dict[str, torch.Tensor], fn: Fn) -> tuple[dict[str, torch.Tensor], dict]:
    """Decoded weights, aggregate SQNR, bits/weight and CPU seconds of one format on all weights."""
    sig = noise = 0.0
    stored = n = 0
    decoded = {}
    t0 = time.process_time()
    for key, w in weights.items():
        rt = fn(w)
        d = rt.decoded.to(torch.float32)
        sig += float(w.double().square().sum())
        noise += float((w.double() - d.double()).square().sum())
        stored += rt.stored_bytes
        n += w.numel()
        decoded[key] = d
    return decoded, {"sqnr_db": 10 * math.log10(sig / noise) if noise else math.inf,
                     "bits_per_weight": 8 * stored / n, "cpu_s": time.process_time() - t0}


# ---------------------------------------------------------------------------------------------- models


def _load_model(folder: Path, causal: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _swap(model, decoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Put decoded weights into the model; returns the originals to restore."""
    params = dict(model.named_parameters())
    saved = {}
    for key, d in decoded.items():
        name = key if key in params else next(p for p in params if p.endswith(key))
        saved[name] = params[name].data
        params[name].data = d.to(params[name].dtype).reshape(params[name].shape)
    return saved


def _restore(model, saved: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, t in saved.items():
        params[name].data = t


class CausalEval:
    """A causal LM's next-token comparison against its own float32 logits on fixed text windows."""

    def __init__(self, folder: Path, text: str, max_tokens: int, window: int) -> None:
        from ggcompress.integrations.evaluation import next_token_logits, text_windows

        self.model, tok = _load_model(folder, causal=True)
        context = getattr(self.model.config, "max_position_embeddings", None) or window
        if window > context:  # positions past the context would measure extrapolation, not quantization
            print(f"  {folder.name}: --window {window} cut to the model's context {context}", flush=True)
            window = context
        self.windows = text_windows(tok, text, max_tokens=max_tokens, window=window)
        self.base = [lg for _, lg in next_token_logits(self.model, self.windows, 1)]

    def compare(self, decoded: dict[str, torch.Tensor]) -> dict:
        from ggcompress.integrations.evaluation import compare_logits, next_token_logits, summarize

        saved = _swap(self.model, decoded)
        try:
            parts = []
            for i, lg in next_token_logits(self.model, self.windows, 1):
                parts.append(compare_logits(self.base[i][0], lg[0], self.windows[i, 1:]))
        finally:
            _restore(self.model, saved)
        cat = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
        out = summarize(cat["kl"], cat["nll_base"], cat["nll_model"], cat["same_top1"].astype(np.float64))
        # Per-window means (every window scores the same number of tokens, so their mean is the token
        # mean): tokens inside a window are correlated, windows spread over the text far less, so the
        # standard errors below are taken over windows, and --render pairs two formats window by window.
        kl_w = [float(p["kl"].double().mean()) for p in parts]
        dnll_w = [float((p["nll_model"] - p["nll_base"]).double().mean()) for p in parts]
        out.update(windows=len(parts), window_kl=kl_w, window_dnll=dnll_w,
                   ppl_base=out["ppl"] / out["ppl_ratio"], kl_mean_se=_se(kl_w),
                   ppl_ratio_se=out["ppl_ratio"] * _se(dnll_w))
        return out


def _se(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (nan for fewer than two)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def paired(a: dict, b: dict) -> dict:
    """Format a minus format b on the same windows: KL-mean difference and perplexity ratio a/b, ± SE.

    Pairing removes the text's own variation (hard passages are hard for both), which is what decides
    whether two close formats are told apart.
    """
    dkl = [x - y for x, y in zip(a["window_kl"], b["window_kl"], strict=True)]
    dnll = [x - y for x, y in zip(a["window_dnll"], b["window_dnll"], strict=True)]
    ratio = math.exp(float(np.mean(dnll)))
    return {"dkl": float(np.mean(dkl)), "dkl_se": _se(dkl),
            "ppl_ratio": ratio, "ppl_ratio_se": ratio * _se(dnll)}


class EmbedEval:
    """MiniLM: cosine of mean-pooled sentence embeddings, quantized vs original."""

    def __init__(self, folder: Path, sentences: list[str]) -> None:
        self.model, tok = _load_model(folder, causal=False)
        self.batch = tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=128)
        self.base = self._embed()

    def _embed(self) -> torch.Tensor:
        with torch.inference_mode():
            h = self.model(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"][..., None].float()
        return (h * mask).sum(1) / mask.sum(1)

    def compare(self, decoded: dict[str, torch.Tensor]) -> dict:
        saved = _swap(self.model, decoded)
        try:
            e = self._embed()
        finally:
            _restore(self.model, saved)
        cos = torch.nn.functional.cosine_similarity(e, self.base, dim=1)
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}


# ---------------------------------------------------------------------------------------------- timing


def quantize_timing(folder: Path, formats: list[str]) -> dict:
    """CPU and wall seconds of a plain streaming copy vs ``quantize_checkpoint`` to each GF format."""
    from ggcompress.formats.quantize import QuantizeConfig, quantize_checkpoint
    from ggcompress.io.checkpoint import CheckpointWriter, open_checkpoint

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        for i in range(2):  # the faster of two copies (the first one may also warm the page cache)
            t0, c0 = time.perf_counter(), time.process_time()
            ck = open_checkpoint(folder)
            with CheckpointWriter(Path(tmp) / f"copy{i}", inputs=[ck.source]) as writer:
                for info, t in ck.iter_tensors():
                    writer.add_tensor(info.name, t)
            run = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            if "copy" not in out or run["wall_s"] < out["copy"]["wall_s"]:
                out["copy"] = run
        for fmt in formats:
            t0, c0 = time.perf_counter(), time.process_time()
            quantize_checkpoint(folder, Path(tmp) / fmt, QuantizeConfig(format=fmt, granularity="block:32"))
            out[fmt] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    for fmt in formats:
        out[fmt]["x_copy_wall"] = out[fmt]["wall_s"] / out["copy"]["wall_s"]
    return out


# ---------------------------------------------------------------------------------------------- tables


def table_designs(weights: dict[str, torch.Tensor]) -> list[dict]:
    """GF with data-fitted vs moment-fitted GG(beta) vs Gaussian tables, every k, block:32 and channel."""
    rows = []
    for gran in ("block:32", "channel"):
        for bits in (3, 4, 5, 6, 8):
            row = {"granularity": gran, "bits": bits}
            for design in ("data", "gg", "gauss"):
                _, st = round_trip_all(weights, gf(bits, gran, design))
                row[design] = st["sqnr_db"]
            rows.append(row)
            print(f"  {gran:9s} gf{bits}: data {row['data']:.2f}  gg {row['gg']:.2f}  "
                  f"gauss {row['gauss']:.2f} dB", flush=True)
    return rows


def ablations(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """GF encoder choices switched off one at a time (SQNR dB over the weights)."""
    variants = {
        "gf4 block:64 signed scale": GFCodec(4),
        "gf4 block:64 magnitude scale": GFCodec(4, signed=False),
        "gf4 block:32 (search, no refit)": GFCodec(4),
        "gf4 block:32 search + table refit": GFCodec(4, refine=True),
        "gf4 block:32 no scale search": GFCodec(4, scale_grid=(1.0,)),
        "gf8 channel (no search)": GFCodec(8),
        "gf8 channel with search 1/0.95/0.9": GFCodec(8, scale_grid=(1.0, 0.95, 0.9)),
    }
    out = {}
    for label, codec in variants.items():
        gran = label.split()[1]

        def run(w: torch.Tensor, c: GFCodec = codec, g: str = gran) -> RoundTrip:
            q = c.encode(w, g)
            return RoundTrip(gf_decode(q), q.stored_bytes)

        _, st = round_trip_all(weights, run)
        out[label] = st["sqnr_db"]
        print(f"  {label:38s} {st['sqnr_db']:.2f} dB", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- main


def plot(results: dict, path: Path) -> None:
    """SQNR vs stored bits for every model in ``results`` (top row) and KL vs bits for each causal LM
    (bottom row); GF-k in red circles, the other formats in blue crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in FIXTURES if results.get(m)]
    causal = [m for m in models if m in CAUSAL and any("kl_mean" in r for r in results[m].values())]
    cols = max(len(models), len(causal), 1)
    rows = 2 if causal else 1
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.8 * rows), squeeze=False)

    def scatter(ax, rows_of_model: dict, key: str) -> None:
        for label, r in rows_of_model.items():
            if key not in r:
                continue
            gfmt = label.startswith("gf")
            ax.scatter(r["bits_per_weight"], r[key], marker="o" if gfmt else "x",
                       color="tab:red" if gfmt else "tab:blue")
            ax.annotate(label.split(" (")[0], (r["bits_per_weight"], r[key]), fontsize=6,
                        xytext=(3, -3), textcoords="offset points")
        ax.set_xlabel("bits per weight (codes + scales + tables)")
        ax.grid(alpha=0.3)

    for ax, model in zip(axes[0], models, strict=False):
        scatter(ax, results[model], "sqnr_db")
        ax.set_title(f"{model}: SQNR of linear weights vs stored bits/weight")
        ax.set_ylabel("SQNR dB")
    for ax, model in zip(axes[1] if causal else [], causal, strict=False):
        scatter(ax, results[model], "kl_mean")
        ax.set_yscale("log")
        ax.set_title(f"{model}: mean KL(base || quantized) per token")
        ax.set_ylabel("KL mean (nats)")
    for ax in [a for row in axes for a in row][: rows * cols]:
        if not ax.has_data():
            ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "—"


def markdown(results: dict) -> str:
    """The docs/benchmarks.md tables from a ``--json`` result."""
    lines: list[str] = []
    mini, smol = results.get("minilm", {}), results.get("smollm2", {})
    if mini or smol:
        lines += ["| class | format | MiniLM bits/w | MiniLM SQNR dB | MiniLM cos mean / min | "
                  "SmolLM2 bits/w | SmolLM2 SQNR dB | KL mean | KL p99 | same top-1 | ppl ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in FORMATS:
        a, b = mini.get(label, {}), smol.get(label, {})
        if not a and not b:
            continue
        cls = (a or b)["class"]
        cos = f"{a['cos_mean']:.4f} / {a['cos_min']:.4f}" if "cos_mean" in a else "—"
        cells = [cls, label, _cell(a, "bits_per_weight", ".3f"), _cell(a, "sqnr_db", ".2f"), cos,
                 _cell(b, "bits_per_weight", ".3f"), _cell(b, "sqnr_db", ".2f"), _cell(b, "kl_mean", ".3g"),
                 _cell(b, "kl_p99", ".3g"), _cell(b, "same_top1", ".3f"), _cell(b, "ppl_ratio", ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    timing = results.get("timing_smollm2")
    if timing:
        lines += ["", "| SmolLM2 | wall s | CPU s | × copy (wall) |", "|---|---|---|---|",
                  f"| streaming copy | {timing['copy']['wall_s']:.1f} | {timing['copy']['cpu_s']:.1f} | 1 |"]
        for fmt, t in timing.items():
            if fmt != "copy":
                lines.append(f"| quantize-rf8 --format {fmt} --granularity block:32 | {t['wall_s']:.1f} | "
                             f"{t['cpu_s']:.1f} | {t['x_copy_wall']:.2f} |")
    for model in CAUSAL:
        if model != "smollm2" and results.get(model):
            lines += ([""] if lines else []) + causal_table(model, results[model])
    return "\n".join(lines)


def causal_table(model: str, rows: dict, reference: str = "gf4 block:32") -> list[str]:
    """One causal LM's own table (every format), then each 4-bit format paired against ``reference``."""
    lines = [f"| class | format | {model} bits/w | SQNR dB | KL mean ± SE | KL p99 | same top-1 | "
             "ppl ratio ± SE |", "|---|---|---|---|---|---|---|---|"]
    for label in FORMATS:
        r = rows.get(label)
        if not r:
            continue
        kl = (f"{r['kl_mean']:.3g} ± {r['kl_mean_se']:.2g}" if "kl_mean_se" in r
              else _cell(r, "kl_mean", ".3g"))
        ppl = (f"{r['ppl_ratio']:.4f} ± {r['ppl_ratio_se']:.2g}" if "ppl_ratio_se" in r
               else _cell(r, "ppl_ratio", ".4f"))
        lines.append("| " + " | ".join([r["class"], label, _cell(r, "bits_per_weight", ".3f"),
                                         _cell(r, "sqnr_db", ".2f"), kl, _cell(r, "kl_p99", ".3g"),
                                         _cell(r, "same_top1", ".3f"), ppl]) + " |")
    ref = rows.get(reference, {})
    others = [label for label in FORMATS if label != reference and "window_kl" in rows.get(label, {})
              and rows[label]["class"] == ref.get("class")]
    if "window_kl" in ref and others:
        lines += ["", f"{model}, {ref['class']} formats paired with {reference} on the same "
                      f"{ref.get('windows', '?')} windows ({ref.get('tokens', '?')} scored tokens; base "
                      f"perplexity {ref.get('ppl_base', math.nan):.1f}); ± is one standard error over "
                      "windows:",
                  "", f"| format | KL mean − {reference}'s | ppl ratio vs {reference} |", "|---|---|---|"]
        for label in others:
            d = paired(rows[label], ref)
            lines.append(f"| {label} | {d['dkl']:+.3g} ± {d['dkl_se']:.2g} | "
                         f"{d['ppl_ratio']:.4f} ± {d['ppl_ratio_se']:.2g} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,smollm2", help=f"comma-separated: {','.join(FIXTURES)}")
    parser.add_argument("--formats", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--tokens", type=int, default=2048, help="causal-LM tokens scored for KL/ppl")
    parser.add_argument("--window", type=int, default=512, help="causal-LM window (cut to the context)")
    parser.add_argument("--sentences", type=int, default=64, help="MiniLM sentences for the cosine")
    parser.add_argument("--no-kl", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--tables", action="store_true", help="only the GF table-design comparison")
    parser.add_argument("--timing-only", action="store_true", help="only the SmolLM2 quantize-vs-copy timing")
    parser.add_argument("--ablations", action="store_true", help="only GF encoder choices switched off")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--render", type=Path, nargs="+",
                        help="print the markdown tables (and --plot) of --json files (merged by model)")
    args = parser.parse_args()
    if args.render:
        results = {}
        for path in args.render:
            for key, value in json.loads(path.read_text()).items():
                results.setdefault(key, {}).update(value)
        print(markdown(results))
        if args.plot:
            plot(results, args.plot)
        return 0
    torch.set_num_threads(1)
    print(f"torch threads 1; machine shared (loaded); {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(FIXTURES))
    if unknown:
        parser.error(f"unknown --models {','.join(unknown)} (known: {','.join(FIXTURES)})")
    folders = {m: FIXTURES[m]() for m in models if m in FIXTURES}
    if args.tables:
        out = {m: table_designs(linear_weights(folders[m])) for m in models}
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return 0
    if args.ablations:
        out = {m: ablations(linear_weights(folders[m])) for m in models}
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return 0
    if args.timing_only:
        timing = quantize_timing(fixtures.smollm2(), ["gf3", "gf4", "gf8"])
        print(json.dumps(timing, indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"timing_smollm2": timing}, indent=1))
        return 0
    labels = args.formats.split(",") if args.formats else list(FORMATS)
    _, valid = fixtures.text()
    text = valid.read_text()
    results: dict = {}
    for model in models:
        weights = linear_weights(folders[model])
        evaluator = None
        if not args.no_kl:
            if model in CAUSAL:
                evaluator = CausalEval(folders[model], text, args.tokens, args.window)
            else:
                paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
                evaluator = EmbedEval(folders[model], paras[: args.sentences])
        results[model] = {}
        for label in labels:
            cls, fn = FORMATS[label]
            decoded, row = round_trip_all(weights, fn)
            row["class"] = cls
            if evaluator is not None:
                row.update(evaluator.compare(decoded))
            results[model][label] = row
            extra = " ".join(f"{k} {v:.4g}" for k, v in row.items()  # lists (per-window means) skipped
                             if k not in ("sqnr_db", "bits_per_weight", "class") and isinstance(v, float))
            print(f"{model:8s} {label:18s} {row['bits_per_weight']:6.3f} b/w  {row['sqnr_db']:6.2f} dB  "
                  f"{extra}", flush=True)
            del decoded
            if args.json:  # after every row: a long run interrupted still leaves its figures
                args.json.write_text(json.dumps(results, indent=1))
    if not args.no_timing and "smollm2" in models:
        results["timing_smollm2"] = quantize_timing(folders["smollm2"], ["gf3", "gf4", "gf8"])
        print(json.dumps(results["timing_smollm2"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

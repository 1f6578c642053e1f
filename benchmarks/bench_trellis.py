"""Where `pack --trellis`'s bits come from: the ablations behind the figures in docs/pack.md and
codec/trellis.py, on the same weights as bench_pack_rd.py (every 2-D weight of ≥ 4096 values).

Per model and step 2^-S (Δ = 9/16·2^-S), from codec/trellis.py's search and the entropy of the symbols
(float64; bits/param over the tensors):
- rounding at 2^-S, trellis states 4 (VVC) vs 8 (NNCodec's; the writer's), and λ: entropy of the
  quantizer-context streams (rounding: of the symbols) plus each stream's count-table size, and SQNR;
- how the indices are modelled (8 states, entropy only): one table H(k); the parity first then m = k >> 1
  per (quantizer, parity); contexts by the state's quantizer H(k|q) (what pack does); by the full state
  H(k|s); by quantizer × row class (8 RMS-octile classes, a byte a row);
- table bits of the quantizer contexts: ranked tables (symbol list + exp-Golomb weights) vs count tables;
- λ (units of Δ² per bit) 0.2 / 0.35 / 0.6.
The modelling columns are entropy only (no tables); the table columns are the tables alone.
The synthetic `laplace` model is 300,000 Laplacian values (scale 0.02, seed 2), where the low-rate rows
show what the quantizer contexts buy. Container-level figures (tables as stored, NNCodec beside them) are
bench_pack_rd.py's.

Run: PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trellis.py [--models minilm wikilm
laplace] [--steps 5 6 8 12]   (add --profile for the CPU ns per weight of each part of the search)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from ggcompress import fixtures  # noqa: E402
from ggcompress.codec import coders, trellis  # noqa: E402
from ggcompress.stats import rate  # noqa: E402


def weights(model: str) -> list[torch.Tensor]:
    if model == "laplace":
        return [torch.from_numpy(np.random.default_rng(2).laplace(0, 0.02, (300, 1000))).float()]
    folder = {"minilm": fixtures.minilm, "wikilm": fixtures.wiki_lm}[model]()
    sd = load_file(str(next(folder.glob("*.safetensors"))))
    return [v for v in sd.values() if v.ndim == 2 and v.numel() >= 4096]


def entropy(sym: torch.Tensor) -> float:
    """Σ −log2 p of the symbols under their own histogram (bits)."""
    if sym.numel() == 0:
        return 0.0
    c = torch.bincount(sym.reshape(-1) - sym.min()).double()
    c = c[c > 0]
    return float(-(c * torch.log2(c / c.sum())).sum())


def tables(sym: torch.Tensor) -> tuple[float, float]:
    """(ranked table bits, count table bits) of one stream (coded as pack codes it with rANS)."""
    if sym.numel() == 0:
        return 0.0, 0.0
    lo = int(sym.min())
    dense = torch.bincount(sym.reshape(-1) - lo).numpy()
    counts = np.sort(dense[dense > 0])[::-1]
    if counts.size < 2:
        return 0.0, 0.0
    w = coders.rans_weights(counts)
    model = rate.exp_golomb_lengths(torch.from_numpy(w - 1), coders.best_eg_order(w - 1))
    ranked = counts.size * coders.uint_bits(dense.size - 1) + int(model.sum())
    return float(ranked), float(coders.count_table_bits(dense))


def full_states(c: trellis.Coded) -> torch.Tensor:
    """The state before each index, (lane, lanes), walked as the decoder does."""
    m = trellis.machine(c.states)
    out = torch.empty_like(c.k)
    s = torch.zeros(c.k.shape[1], dtype=torch.int64)
    for t in range(c.k.shape[0]):
        out[t] = s
        s = m.next[s * 2 + (c.k[t] & 1)]
    return out


def row_classes(w: torch.Tensor, c: trellis.Coded, classes: int = 8) -> torch.Tensor:
    rms = w.double().square().mean(1)
    edges = torch.quantile(rms, torch.linspace(0, 1, classes + 1, dtype=torch.float64)[1:-1])
    return trellis.lane_classes(torch.bucketize(rms, edges), c.n, w.shape[1]).reshape(1, -1)


def run(ws: list[torch.Tensor], s: int) -> dict[str, float]:
    n = sum(w.numel() for w in ws)
    sig = sum(float(w.double().square().sum()) for w in ws)
    delta = 2.0**-s * trellis.STEP_FACTOR
    acc: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        acc[key] = acc.get(key, 0.0) + v

    for w in ws:
        x = w.double().reshape(-1)
        q = torch.round(x / 2.0**-s)
        add("round_err", float((q * 2.0**-s - x).square().sum()))
        add("round_bits", entropy(q.long()) + tables(q.long())[1])
        for states in (4, 8):
            for lam in (0.2, 0.35, 0.6) if states == 8 else (trellis.LAMBDA,):
                c = trellis.search(w, delta, lam=lam, states=states)
                key = f"s{states}_l{lam}"
                add(f"{key}_err", float((c.levels().double() * delta - x).square().sum()))
                streams = c.context_streams()
                add(f"{key}_bits", sum(entropy(z) + tables(z)[1] for z in streams))
        c = trellis.search(w, delta)
        k, qid = c.k, c.qid
        add("one_table", entropy(k))
        add("parity_first", entropy(k & 1) + sum(entropy((k >> 1)[(qid == a) & ((k & 1) == p)])
                                                 for a in (0, 1) for p in (0, 1)))
        add("by_quantizer", sum(entropy(z) for z in c.context_streams()))
        st = full_states(c)
        add("by_state", sum(entropy(k[st == v]) for v in range(c.states)))
        cls = row_classes(w, c)
        add("by_quantizer_row", sum(entropy(z) for z in c.context_streams(cls, 8)))
        add("row_tables", sum(tables(z)[1] for z in c.context_streams(cls, 8)) + 8 * w.shape[0])
        for z in c.context_streams():
            ranked, counted = tables(z)
            add("ranked_tables", ranked)
            add("count_tables", counted)
    out = {k: v / n for k, v in acc.items() if not k.endswith("_err")}
    out.update({k.replace("_err", "_sqnr"): 10 * math.log10(sig / v)
                for k, v in acc.items() if k.endswith("_err")})
    return out


def profile(ws: list[torch.Tensor], s: int, repeats: int = 3) -> dict[str, float]:
    """CPU ns per weight of the search's parts (best of ``repeats``, one thread): rates, branch costs, the
    add-compare-select loop, its backtrack (the rest of _viterbi), the context streams and the whole
    search — the figures docs/benchmarks.md gives for why --trellis stays below pack's 50 MB/s."""
    import time

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return min(times)

    m = trellis.machine(trellis.STATES)
    delta = 2.0**-s * trellis.STEP_FACTOR
    acc = dict.fromkeys(("rates", "branch", "viterbi", "streams", "search"), 0.0)
    n = 0
    for w in ws:
        x = w.reshape(-1).to(torch.float32) / delta
        lanes = x.numel() // trellis.LANE
        if lanes == 0:
            continue
        xl = x[:lanes * trellis.LANE].reshape(lanes, trellis.LANE).T.contiguous()
        amax = float(x.abs().max())
        rates = trellis._initial_rates(x, amax)
        acc["rates"] += best(lambda: trellis._initial_rates(x, amax))  # noqa: B023
        acc["branch"] += best(lambda: trellis._branch_costs(xl, rates, trellis.LAMBDA))  # noqa: B023
        acc["viterbi"] += best(lambda: trellis._viterbi(xl, rates, trellis.LAMBDA, m))  # noqa: B023
        c = trellis.search(w, delta)
        acc["streams"] += best(c.context_streams)
        acc["search"] += best(lambda: trellis.search(w, delta))  # noqa: B023
        n += lanes * trellis.LANE
    out = {k: v / n * 1e9 for k, v in acc.items()}
    out["loop"] = out["viterbi"] - out["branch"]  # the forward pass and the backtrack
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "wikilm", "laplace"],
                    choices=["minilm", "wikilm", "laplace"])
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 6, 8, 12])
    ap.add_argument("--profile", action="store_true",
                    help="instead of the ablations: CPU ns per weight of each part of the search")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        print("| model | S | rates | branch costs | add-compare-select + backtrack | context streams | "
              "whole search | ns per weight, CPU, one thread |")
        print("|---" * 8 + "|")
    else:
        print("| model | S | rounding bits @ dB | 4 states | 8 states | λ 0.2 / 0.35 / 0.6 (8 states) "
              "| one table / parity first / by quantizer / by state / by quantizer × row | ranked / count "
              "tables | row-context tables + classes |")
        print("|---" * 9 + "|")
    for model in args.models:
        ws = weights(model)
        for s in args.steps:
            if args.profile:
                print(profile_row(model, s, profile(ws, s)), flush=True)
            else:
                print(ablation_row(model, s, run(ws, s)), flush=True)


def profile_row(model: str, s: int, r: dict[str, float]) -> str:
    return (f"| {model} | {s} | {r['rates']:.1f} | {r['branch']:.1f} | {r['loop']:.1f} | "
            f"{r['streams']:.1f} | {r['search']:.1f} | |")


def ablation_row(model: str, s: int, r: dict[str, float]) -> str:
    lam = " / ".join(f"{r[f's8_l{v}_bits']:.4f} @ {r[f's8_l{v}_sqnr']:.2f}" for v in (0.2, 0.35, 0.6))
    return (f"| {model} | {s} | {r['round_bits']:.4f} @ {r['round_sqnr']:.2f} | "
            f"{r[f's4_l{trellis.LAMBDA}_bits']:.4f} @ {r[f's4_l{trellis.LAMBDA}_sqnr']:.2f} | "
            f"{r[f's8_l{trellis.LAMBDA}_bits']:.4f} @ {r[f's8_l{trellis.LAMBDA}_sqnr']:.2f} | {lam} | "
            f"{r['one_table']:.4f} / {r['parity_first']:.4f} / {r['by_quantizer']:.4f} / "
            f"{r['by_state']:.4f} / {r['by_quantizer_row']:.4f} | {r['ranked_tables']:.4f} / "
            f"{r['count_tables']:.4f} | {r['row_tables']:.4f} |")

if __name__ == "__main__":
    main()

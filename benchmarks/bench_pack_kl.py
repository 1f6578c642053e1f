"""Bits at a KL target (`pack --max-kl`): one uniform step vs rate–distortion allocation with plain squared
error vs allocation weighted by each tensor's Fisher sensitivity, side by side.

For each model: one calibration (codec/klalloc.calibrate: Fisher on N windows of the Wikipedia validation
text, the model's logits on N other windows) and one set of rate/error curves, then for each KL target K
the same measured search (codec/klalloc.search) with three families of allocations:

- ``uniform``: one step 2^-S for every tensor; the coarsest S on the common grid (quarter S for fp32,
  whole S when a tensor is bf16) whose measured KL ≤ K;
- ``mse``: per-tensor steps, weights 1 (what --target-sqnr does), the error budget moved until KL ≤ K;
- ``fisher``: per-tensor steps, weights F̄_t (what --max-kl does);
- ``fisher-rows``: one step per row (output channel; quarter S for fp32, whole S for bf16), weights
  (F̄_r + F̄_t)/2 per row (klalloc.row_weights; --max-kl --step-granularity row); bits include the int8
  step code per row. For each chosen per-row
  allocation the script also estimates one rANS table per tensor (what the container does) against one
  table per group of rows with equal S (rdalloc.row_coding_bits).
- ``uniform-trellis`` / ``fisher-trellis``: the ``uniform`` / ``fisher`` search with every tensor
  trellis-coded at its step (--quant step:S --trellis / --max-kl --trellis): the KL is measured on the
  trellis-restored values, and bits are the trellis coding's own estimate per tensor and step
  (codec/pack.trellis_plan: payload + tables as pack chooses them).

``--sqnr`` adds --target-sqnr per-tensor vs per-row on MiniLM (fixtures.minilm), packed for real (rANS).

Two comparisons: *at the target* (the cheapest allocation each search found with measured KL ≤ K: what a
user gets) and *at equal measured KL* (each method's measured (bits, KL) points, Pareto frontier,
bits interpolated linearly in log KL at exactly K — for ``uniform`` that is a fractional step between two
grid steps, which bf16 tensors could not actually use). Bits are the curves' coded-bit estimates (rANS
payload + table, as --target-sqnr predicts them); ``--pack`` also packs each chosen allocation for real
(rANS) and reports the stored bits (slow on SmolLM2: ~25 s CPU each).

SmolLM2 is dequantized from a Q4_1 GGUF: its weights sit on a 4-bit lattice, so its figures say little
about natural weights. The Wikipedia LM (fixtures.wiki_lm, 5.5M params, fp32) was trained on the train
split of the same text, so the validation text is held out for it.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_pack_kl.py [--models wiki smollm2]
     [--kl 0.01 0.03 0.1] [--pack] [--json out.json]
     PYTHONPATH=. .venv/bin/python benchmarks/bench_pack_kl.py --models wiki --trellis-lambdas 0.35 0.1 0
     (the λ experiment behind trellis.KL_LAMBDA: uniform steps --steps 4.25 5.25 6, rounded vs trellis)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GGCOMPRESS_WORKERS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ggcompress import __version__, fixtures  # noqa: E402
from ggcompress.codec import klalloc, rdalloc  # noqa: E402
from ggcompress.codec.pack import PackOptions, _pack_checkpoint  # noqa: E402
from ggcompress.io.checkpoint import open_checkpoint  # noqa: E402

MODELS = {"wiki": fixtures.wiki_lm, "smollm2": fixtures.smollm2}
METHODS = ("uniform", "mse", "fisher", "fisher-rows", "uniform-trellis", "fisher-trellis")
TRELLIS = {"uniform-trellis": "uniform", "fisher-trellis": "fisher"}


def frontier_bits(points: list[tuple[float, float]], k: float) -> float | None:
    """Bits at measured KL = k on the Pareto frontier of (bits, KL) points, linear in log KL between the
    two frontier points around k; None when no point lies on one side."""
    pts = sorted(points)  # by bits
    front: list[tuple[float, float]] = []
    for b, m in sorted(pts, key=lambda p: (p[1], p[0])):  # by KL: keep a point only if it is cheaper
        if not front or b < front[-1][0]:
            front.append((b, m))
    below = [p for p in front if p[1] <= k]
    above = [p for p in front if p[1] > k]
    if not below or not above:
        return None
    (b0, m0), (b1, m1) = below[-1], above[0]  # the cheapest within k, the dearest above it
    if m0 <= 0:
        return b0
    t = (math.log(k) - math.log(m0)) / (math.log(m1) - math.log(m0))
    return b0 + t * (b1 - b0)


def real_bits(src: Path, steps: dict[str, float], work: Path, trellis: bool = False) -> float:
    """Pack ``src`` with these per-tensor steps (rANS; trellis-coded as --max-kl --trellis does) and
    return the stored coded bits/param."""
    ck = open_checkpoint(src)
    if trellis:
        opts = PackOptions(coder="rans", trellis=True, max_kl=1.0)  # max_kl: code every step by trellis
        rep = _pack_checkpoint(ck, ck, work / "x.ggz", opts, True, None,
                               steps={n: 2.0 ** -s for n, s in steps.items()}, target={"max_kl": 0})
        return rep["summary"]["coded_bits_per_param"]
    if any(isinstance(s, np.ndarray) for s in steps.values()):
        rep = _pack_checkpoint(ck, ck, work / "x.ggz", PackOptions(coder="rans"), True, None,
                               row_steps=steps, target={"max_kl": 0})
        return rep["summary"]["coded_bits_per_param"]
    rep = _pack_checkpoint(ck, ck, work / "x.ggz", PackOptions(coder="rans"), True, None,
                           steps={n: 2.0 ** -s for n, s in steps.items()}, target={"max_kl": 0})
    return rep["summary"]["coded_bits_per_param"]


def run_model(name: str, kls: list[float], text: str, do_pack: bool, work: Path) -> dict:
    src = Path(MODELS[name]())
    ck = open_checkpoint(src)
    names = [i.name for i in ck.tensors if i.is_float and len(i.shape) >= 2 and i.numel]
    c0 = time.process_time()
    cal = klalloc.calibrate(src, names, text)
    cal_cpu = time.process_time() - c0
    c0 = time.process_time()
    curves = [rdalloc.measure_curve(x, i.name, per_octave=4 if i.dtype in ("F32", "F64") else 1)
              for i, x in ck.iter_tensors(names)]
    curve_cpu = time.process_time() - c0
    c0 = time.process_time()
    row_curves = [rdalloc.measure_row_curves(x, i.name, per_octave=4 if i.dtype in ("F32", "F64") else 1)
                  for i, x in ck.iter_tensors(names)]
    row_curve_cpu = time.process_time() - c0
    rel, _ = cal.weights(names)
    numel = np.array([c.numel for c in curves], dtype=np.float64)
    w = np.array([rel[c.name] for c in curves])
    # the high-rate saving the weights allow: ½·(log2 of the mean weight − mean log2 weight), per param
    bound = 0.5 * (math.log2(float((numel * w).sum() / numel.sum()))
                   - float((numel * np.log2(w)).sum() / numel.sum()))
    rows = []
    points: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    for k in kls:
        for m in METHODS:
            c0 = time.process_time()
            if m == "fisher-rows":
                r = klalloc.search_rows(row_curves, cal, k)
            elif m in TRELLIS:
                cal.probe.use_quantizer("trellis")
                r = klalloc.search(curves, cal, k, method=TRELLIS[m])
                cal.probe.use_quantizer("round")
            else:
                r = klalloc.search(curves, cal, k, method=m)
            cpu = time.process_time() - c0

            # with a trellis probe the evaluations' bits are the trellis coding's own estimates
            points[m] += [(e.bits / r.params, e.measured_kl) for e in r.evaluations]
            row = {"model": name, "max_kl": k, "method": m, "bits": r.bits_per_param,
                   "measured_kl": r.measured_kl, "predicted_kl": r.predicted_kl,
                   "evaluations": len(r.evaluations), "cpu_s": cpu,
                   "steps": sorted({float(v) / (4 if m == "fisher-rows" else 1)
                                    for s in r.steps.values() for v in np.atleast_1d(s)}),
                   "uniform_s": next(iter(r.steps.values())) if m.startswith("uniform") else None}
            if m == "fisher-rows":
                one = groups = 0.0
                for i, x in ck.iter_tensors(names):
                    t = rdalloc.row_coding_bits(x, r.steps[i.name])
                    one += t["one_table"]
                    groups += t["table_per_group"]
                side = rdalloc.ROW_SIDE_BITS * sum(c.rows for c in row_curves)
                row["one_table_bits"] = (one + side) / r.params
                row["group_tables_bits"] = (groups + side) / r.params
            if do_pack:
                row["stored_bits"] = real_bits(src, r.steps, work, trellis=m in TRELLIS)
            rows.append(row)
    for row in rows:
        row["bits_equal_kl"] = frontier_bits(points[row["method"]], row["max_kl"])
    return {"model": name, "source": str(src), "params": int(sum(c.numel for c in curves)),
            "tensors": len(curves), "calibration": cal.info, "calibration_cpu_s": cal_cpu,
            "curves_cpu_s": curve_cpu, "row_curves_cpu_s": row_curve_cpu,
            "weight_spread": [float(w.min()), float(w.max())],
            "high_rate_bound_bits": bound, "rows": rows}


def print_model(res: dict) -> None:
    c = res["calibration"]
    print(f"\n## {res['model']} ({res['params']:,} quantized params in {res['tensors']} tensors)\n")
    print(f"Calibration: Fisher {c['fisher_windows']} × {c['window_tokens']} tokens "
          f"{c['fisher_seconds_cpu']:.1f} s CPU; KL on {c['kl_tokens']} held-out tokens; calibrate() "
          f"{res['calibration_cpu_s']:.1f} s CPU in all; curves {res['curves_cpu_s']:.1f} s CPU, row curves "
          f"{res['row_curves_cpu_s']:.1f} s CPU. Fisher "
          f"weights w_t = F̄_t/F̄ span {res['weight_spread'][0]:.3g}–{res['weight_spread'][1]:.3g}; "
          f"high-rate bound on the saving vs one step: {res['high_rate_bound_bits']:.3f} bits/param.\n")
    stored = any("stored_bits" in r for r in res["rows"])
    print("| max KL | method | bits/param at target | measured KL | predicted KL | vs uniform | "
          "bits/param at equal KL | vs uniform | evals | search CPU s |"
          + (" stored b/p |" if stored else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if stored else ""))
    for r in res["rows"]:
        uni = next(u for u in res["rows"] if u["max_kl"] == r["max_kl"] and u["method"] == "uniform")
        vs = f"{r['bits'] / uni['bits'] - 1:+.1%}" if r["method"] != "uniform" else f"S = {r['uniform_s']:g}"
        eq, ueq = r["bits_equal_kl"], uni["bits_equal_kl"]
        eq_s = f"{eq:.3f}" if eq is not None else "n/a"
        vs_eq = f"{eq / ueq - 1:+.1%}" if eq is not None and ueq and r["method"] != "uniform" else ""
        print(f"| {r['max_kl']:g} | {r['method']} | {r['bits']:.3f} | {r['measured_kl']:.4f} | "
              f"{r['predicted_kl']:.4f} | {vs} | {eq_s} | {vs_eq} | {r['evaluations']} | {r['cpu_s']:.1f} |"
              + (f" {r['stored_bits']:.3f} |" if stored else ""))
    for r in res["rows"]:
        if "one_table_bits" in r:
            print(f"\nfisher-rows at KL {r['max_kl']:g}: estimated {r['one_table_bits']:.3f} bits/param with "
                  f"one table per tensor, {r['group_tables_bits']:.3f} with one table per group of equal-S "
                  f"rows "
                  f"(S arrays included; allocation estimate {r['bits']:.3f}).")


def run_lambdas(name: str, text: str, steps: list[float], lambdas: list[float]) -> list[dict]:
    """KL, SQNR and estimated bits of one uniform step 2^-S for every tensor, rounded and trellis-coded
    at each λ: why --max-kl --trellis searches with trellis.KL_LAMBDA rather than the SQNR-tuned LAMBDA."""
    src = Path(MODELS[name]())
    ck = open_checkpoint(src)
    names = [i.name for i in ck.tensors if i.is_float and len(i.shape) >= 2 and i.numel]
    cal = klalloc.calibrate(src, names, text)
    originals = cal.probe.originals
    params = sum(x.numel() for x in originals.values())
    curves = {i.name: rdalloc.measure_curve(x, i.name, per_octave=4 if i.dtype in ("F32", "F64") else 1)
              for i, x in ck.iter_tensors(names)}

    def sqnr() -> float:  # of the values the probe just put into the model (exactly the restored ones)
        sig = sum(float(x.double().square().sum()) for x in originals.values())
        err = sum(float((x.double() - cal.probe.params[n].detach().double().reshape(x.shape)).square().sum())
                  for n, x in originals.items())
        return 10 * math.log10(sig / err)

    rows = []
    for s in steps:
        step = 2.0 ** -s
        cal.probe.use_quantizer("round")
        kl = cal.probe.kl(dict.fromkeys(names, step))
        bits = sum(float(c.bits[int(np.flatnonzero(c.s == s)[0])]) for c in curves.values()) / params
        rows.append({"model": name, "s": s, "quantizer": "round", "lambda": None, "kl": kl, "bits": bits,
                     "sqnr_db": sqnr()})
        for lam in lambdas:
            cal.probe.use_quantizer("trellis", lam)
            kl = cal.probe.kl(dict.fromkeys(names, step))
            rows.append({"model": name, "s": s, "quantizer": "trellis", "lambda": lam, "kl": kl,
                         "bits": sum(cal.probe.coded_bits.values()) / params, "sqnr_db": sqnr()})
    cal.probe.restore()
    print(f"\n## {name}: one step 2^-S for every tensor, rounded vs trellis-coded at each λ\n")
    print("| S | quantizer | λ | KL (nats) | KL vs rounding | SQNR dB | bits/param (estimate) | "
          "bits vs rounding |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["s"] == r["s"] and b["quantizer"] == "round")
        lam = "" if r["lambda"] is None else f"{r['lambda']:g}"
        print(f"| {r['s']:g} | {r['quantizer']} | {lam} | {r['kl']:.4f} | {r['kl'] / base['kl'] - 1:+.1%} | "
              f"{r['sqnr_db']:.2f} | {r['bits']:.3f} | {r['bits'] / base['bits'] - 1:+.1%} |")
    return rows


def run_sqnr(targets: list[float], work: Path) -> list[dict]:
    """--target-sqnr on MiniLM, per-tensor vs per-row steps, packed for real (rANS)."""
    from ggcompress.codec.pack import pack

    src = fixtures.minilm()
    out = []
    for t in targets:
        for g in ("tensor", "row"):
            c0 = time.process_time()
            ck = pack(src, work / "m.ggz", PackOptions(target_sqnr_db=t, coder="rans", step_granularity=g),
                      force=True)["checkpoints"][0]
            s = ck["summary"]
            out.append({"target_sqnr_db": t, "granularity": g,
                        "coded_bits_per_param": s["coded_bits_per_param"],
                        "predicted_bits_per_param": ck["allocation"]["predicted_coded_bits_per_param"],
                        "sqnr_db": s["sqnr_db"], "cpu_s": time.process_time() - c0})
    print("\n## MiniLM --target-sqnr: per-tensor vs per-row steps (packed, rANS)\n")
    print("| target SQNR dB | granularity | stored coded bits/param | predicted | measured SQNR dB | CPU s |")
    print("|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['target_sqnr_db']:g} | {r['granularity']} | {r['coded_bits_per_param']:.3f} | "
              f"{r['predicted_bits_per_param']:.3f} | {r['sqnr_db']:.2f} | {r['cpu_s']:.1f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--kl", nargs="+", type=float, default=[0.01, 0.03, 0.1])
    ap.add_argument("--pack", action="store_true", help="also pack every chosen allocation (rANS)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--trellis-lambdas", nargs="+", type=float, metavar="LAMBDA",
                    help="instead of the searches: KL / SQNR / bits of uniform steps (--steps), rounded vs "
                    "trellis-coded at these λ (the trellis.KL_LAMBDA experiment)")
    ap.add_argument("--steps", nargs="+", type=float, default=[4.25, 5.25, 6.0],
                    help="uniform S for --trellis-lambdas (quarter steps on fp32 models)")
    ap.add_argument("--sqnr", nargs="*", type=float,
                    help="also MiniLM --target-sqnr per-tensor vs per-row at these targets (dB; "
                    "default 30 40)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = Path(fixtures.text()[1]).read_text(encoding="utf-8")
    print(f"# bench_pack_kl — ggcompress {__version__}, {date.today()}, {platform.machine()}, "
          f"{os.cpu_count()} shared CPUs, one thread; calibration: Wikipedia validation text")
    t0 = time.process_time()
    results = []
    if args.trellis_lambdas:
        rows = [r for model in args.models
                for r in run_lambdas(model, text, args.steps, args.trellis_lambdas)]
        print(f"\nTotal: {time.process_time() - t0:.0f} s CPU.")
        if args.json:
            args.json.write_text(json.dumps({"version": __version__, "lambda_rows": rows}, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="bench-kl-") as tmp:
        for model in args.models:
            res = run_model(model, args.kl, text, args.pack, Path(tmp))
            print_model(res)
            results.append(res)
        sqnr = run_sqnr(args.sqnr or [30.0, 40.0], Path(tmp)) if args.sqnr is not None else []
    total = time.process_time() - t0
    print(f"\nTotal: {total:.0f} s CPU.")
    if args.json:
        doc = {"version": __version__, "cpu_s": total, "models": results, "sqnr": sqnr}
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

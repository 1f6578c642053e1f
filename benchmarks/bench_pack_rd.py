"""Rate vs quality of lossy pack modes side by side: coded bits/param against SQNR.

Rows per model: `pack --quant step:S` (one uniform step), `pack --target-sqnr DB` (rate–distortion
allocation of per-tensor steps, codec/rdalloc.py) at the uniform rows' SQNRs and between them,
`pack --quant step:S --rdoq` (codec/rdoq.py), `pack --quant step:S --trellis` and `--target-sqnr DB
--trellis` at the midpoints (codec/trellis.py), the GGUF legacy quantizers Q8_0 / Q5_0 / Q4_0 (the `gguf`
package's reference quantizers; their nominal 8.5 / 5.5 / 4.5 bits/param include the fp16 block
scales), and NNCodec (the MPEG NNR reference codec, `nncodec` 2.1.3) plain and with dependent
quantization, driven in its own interpreter by benchmarks/peers/nncodec_driver.py.
Every ggcompress row is a real container: bits are its coded payload + tables, SQNR is measured on the
restored weights, encode speed is source MB per CPU second of `pack`, decode speed of reading every
tensor back (`read_packed`, checksums verified), one thread. GGUF: quantize / dequantize.
NNCodec rows: bits are its whole bitstream (headers included), SQNR is measured on what its
`decompress` returns; speeds are CPU seconds of its `compress` / `decompress` (one thread).
The same tensors everywhere: every float tensor of 2+ dims (GGUF rows: those whose last dim is a
multiple of 32, the block size; the rest are counted and left out of the GGUF figures); NNCodec gets
them as float32 (exact for fp32/bf16/fp16 sources) and MB/s count their source bytes.

NNCodec's qp at qp_density 2 is a step of 2^(qp/4): "NNCodec plain" at qp = -4S is ggcompress's step
2^-S (its SQNR matches `step:S`). With dependent quantization a qp's step is the spacing of the union
of two quantizers each twice as coarse, ~4.7 dB below plain at the same qp, so "NNCodec DQ" runs at
qp = -4S - 4 (NNCodec's own DQ-equivalent offset, nnc_core.common: ~1.2 dB above plain qp -4S) and
-4S - 3 (~0.7 dB below it), --dq-qp-offsets, which bracket each plain row's SQNR. Under each table:
bits/param of every method at the same SQNR (each curve interpolated linearly in (SQNR, bits) at the
uniform rows' SQNRs, or the NNCodec plain rows' with --nncodec-only), then every RD / RDOQ / NNCodec
row against the uniform curve, and NNCodec plain qp -4S against `step:S` (the mapping check).

KL / perplexity are not measured here (bench_pack_kl.py measures `--max-kl`). SmolLM2 is dequantized
from a Q4_1 GGUF: its weights sit on a 4-bit lattice, so its figures say little about natural weights.

Run: /work/main/.venv/bin/python benchmarks/bench_pack_rd.py [--models minilm smollm2 wikilm]
     [--steps 6 7 8 9 10] [--peer-python /tmp/nncvenv/bin/python] [--nncodec-only] [--no-nncodec]
     [--json OUT.json] [--plot OUT.png];  --render A.json B.json --plot OUT.png redraws saved runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GGCOMPRESS_WORKERS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ggcompress import __version__, fixtures  # noqa: E402
from ggcompress.codec.pack import PackOptions, pack, read_packed  # noqa: E402
from ggcompress.io.checkpoint import open_checkpoint  # noqa: E402

MODELS = {"minilm": fixtures.minilm, "smollm2": fixtures.smollm2, "wikilm": fixtures.wiki_lm}
DRIVER = Path(__file__).resolve().parent / "peers" / "nncodec_driver.py"


def run_pack(src: Path, out: Path, opts: PackOptions) -> dict:
    c0 = time.process_time()
    doc = pack(src, out, opts, force=True)
    cpu = time.process_time() - c0
    s = doc["checkpoints"][0]["summary"]
    c0 = time.process_time()
    for _name, _t in read_packed(out):
        pass
    dec = time.process_time() - c0
    return {"bits": s["coded_bits_per_param"], "sqnr": s["sqnr_db"], "mbs": s["source_bytes"] / cpu / 1e6,
            "dec_mbs": s["source_bytes"] / dec / 1e6}


def gguf_rows(src: Path) -> list[dict]:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rows = []
    for qt, bits in ((T.Q8_0, 8.5), (T.Q5_0, 5.5), (T.Q4_0, 4.5)):
        sig = err = 0.0
        left = 0
        enc = dec = 0.0
        nbytes = 0
        for info, x in open_checkpoint(src).iter_tensors():
            if not info.is_float or len(info.shape) < 2 or info.numel == 0:
                continue
            if info.shape[-1] % 32:
                left += 1
                continue
            a = x.to(torch.float32).numpy()
            c0 = time.process_time()
            q = quants.quantize(a, qt)
            c1 = time.process_time()
            y = quants.dequantize(q, qt)
            dec += time.process_time() - c1
            enc += c1 - c0
            y = y.astype(np.float64)
            a64 = a.astype(np.float64)
            sig += float((a64 * a64).sum())
            err += float(((a64 - y) ** 2).sum())
            nbytes += info.numel * x.element_size()
        rows.append({"method": f"GGUF {qt.name}", "setting": "", "bits": bits,
                     "sqnr": 10 * math.log10(sig / err), "mbs": nbytes / enc / 1e6,
                     "dec_mbs": nbytes / dec / 1e6,
                     "note": f"{left} tensors with last dim % 32 != 0 left out" if left else ""})
    return rows


def nncodec_missing(python: str) -> str | None:
    """Why NNCodec cannot run from `python`, or None when it can (its C++ extension imports)."""
    if not Path(python).exists():
        return f"NNCodec not installed at {python} (no such interpreter)"
    probe = subprocess.run([python, "-c", "from nncodec.extensions import deepCABAC"], capture_output=True,
                           text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"NNCodec not installed at {python} ({last})"
    return None


def nncodec_rows(python: str, src: Path, steps: list[int], dq_offsets: list[int], tmpdir: Path
                 ) -> list[dict]:
    """NNCodec plain at qp = -4S and with dependent quantization at qp = -4S - each offset, on the same
    tensors as the pack rows, each a compress + decompress round trip in the peer interpreter."""
    why = nncodec_missing(python)
    if why:
        return [{"method": "NNCodec", "skipped": why}]
    arrays, source_bytes = {}, 0
    for info, x in open_checkpoint(src).iter_tensors():
        if not info.is_float or info.numel == 0 or len(info.shape) < 2 or x.element_size() < 2:
            continue  # as pack's step mode: float tensors of 2+ dims, float8 left as they are
        arrays[f"t{len(arrays):05d}"] = x.to(torch.float32).contiguous().numpy()
        source_bytes += info.numel * x.element_size()
    npz = tmpdir / "nncodec-in.npz"
    np.savez(npz, **arrays)
    params = sum(a.size for a in arrays.values())
    del arrays
    runs = [(-4 * s, False) for s in steps] + [(-4 * s - o, True) for s in steps for o in dq_offsets]
    cmd = [python, str(DRIVER), str(npz), *(f"--run={qp}:{int(dq)}" for qp, dq in runs)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    npz.unlink()
    if res.returncode:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return [{"method": "NNCodec", "skipped": f"driver failed: {tail}"}]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    if doc["params"] != params:
        raise SystemExit(f"NNCodec coded {doc['params']} parameters, {params} were sent")
    rows = []
    for r in doc["runs"]:
        step = -r["qp"] / 4
        rows.append({"method": "NNCodec DQ" if r["dq"] else "NNCodec plain",
                     "setting": f"qp {r['qp']} (step 2^-{step:g})", "bits": r["bits_per_param"],
                     "sqnr": r["sqnr_db"], "mbs": source_bytes / r["encode_cpu_s"] / 1e6,
                     "dec_mbs": source_bytes / r["decode_cpu_s"] / 1e6,
                     "note": f"nncodec {doc['version']}; {r['bytes']} bytes; {doc['tensors']} tensors",
                     "qp": r["qp"], "dq": r["dq"]})
    return rows


def at_sqnr(curve: list[tuple[float, float]], q: float, slack: float = 0.3) -> float | None:
    """Bits of a (SQNR, bits) curve at SQNR q, linear between its two nearest points; None when q lies more
    than `slack` dB outside the curve's range (a short extrapolation covers rows a hair beyond its end)."""
    pts = sorted(curve)
    if not pts or q < pts[0][0] - slack or q > pts[-1][0] + slack:
        return None
    if len(pts) == 1:
        return pts[0][1] if abs(q - pts[0][0]) < 1e-9 else None
    i = min(max(int(np.searchsorted([p[0] for p in pts], q)), 1), len(pts) - 1)
    (q0, b0), (q1, b1) = pts[i - 1], pts[i]
    return b0 if q1 == q0 else b0 + (b1 - b0) * (q - q0) / (q1 - q0)


def equal_sqnr_lines(rows: list[dict]) -> list[str]:
    """The same-SQNR table (every curve at the reference rows' SQNRs), each RD / RDOQ / NNCodec row against
    the uniform-step curve, and each NNCodec plain row against `step:S` at the same step (qp = -4S)."""
    def curve(method: str) -> list[tuple[float, float]]:
        return [(r["sqnr"], r["bits"]) for r in rows if r.get("method") == method]

    names = ("uniform step", "RD allocation", "RDOQ", "trellis", "RD + trellis", "NNCodec plain",
             "NNCodec DQ")
    methods = [m for m in names if curve(m)]
    ref = "uniform step" if curve("uniform step") else "NNCodec plain"
    if ref not in methods:
        return []
    lines = [f"Bits/param at the same SQNR (the {ref} rows' SQNRs; each curve interpolated, — where out of "
             "its range):", "", "| SQNR dB | " + " | ".join(methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for q, _ in sorted(curve(ref)):
        cells = []
        for m in methods:
            b = at_sqnr(curve(m), q)
            cells.append("—" if b is None else f"{b:.3f}")
        lines.append(f"| {q:.2f} | " + " | ".join(cells) + " |")
    uni = sorted(curve("uniform step"))
    if not uni:
        return lines
    lines.append("")
    for r in rows:
        if r.get("method") not in ("RD allocation", "RDOQ", "trellis", "RD + trellis", "NNCodec plain",
                                   "NNCodec DQ"):
            continue
        cheapest = min((b for q, b in uni if q >= r["sqnr"] - 0.005), default=None)
        note = (f"vs the cheapest uniform step meeting its SQNR: {r['bits'] / cheapest - 1:+.1%}"
                if cheapest else "no uniform step reaches its SQNR")
        interp = at_sqnr(uni, r["sqnr"])
        note += (f"; {r['sqnr']:.2f} dB is outside the uniform rows' SQNR range" if interp is None else
                 f"; vs the uniform curve interpolated at {r['sqnr']:.2f} dB: {r['bits'] / interp - 1:+.2%}")
        lines.append(f"- {r['method']} {r['setting']}: {note}")
    ours, theirs = curve("trellis"), curve("NNCodec DQ")
    for q, _ in sorted(curve(ref)) if ours and theirs else []:
        a, b = at_sqnr(ours, q), at_sqnr(theirs, q)
        if a is not None and b is not None:
            lines.append(f"- at {q:.2f} dB: pack --trellis {a:.3f} vs NNCodec DQ {b:.3f} bits/param "
                         f"({a / b - 1:+.2%})")
    by_step = {r["setting"]: r for r in rows if r.get("method") == "uniform step"}
    for r in rows:
        if r.get("method") == "NNCodec plain" and r["qp"] % 4 == 0 and f"step:{-r['qp'] // 4}" in by_step:
            u = by_step[f"step:{-r['qp'] // 4}"]
            lines.append(f"- NNCodec plain qp {r['qp']} vs uniform step:{-r['qp'] // 4}: SQNR "
                         f"{r['sqnr'] - u['sqnr']:+.3f} dB, bits {r['bits'] / u['bits'] - 1:+.2%}")
    return lines


def plot(everything: dict[str, list[dict]], path: Path) -> None:
    """Bits/param against SQNR, one panel per model, every method that ran (docs/img/pack_rd.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"uniform step": "o-", "RD allocation": "s:", "RDOQ": "v:", "trellis": "D-",
              "RD + trellis": "d:", "NNCodec plain": "^--", "NNCodec DQ": "x--"}
    fig, axes = plt.subplots(2, len(everything), figsize=(6 * len(everything), 8), squeeze=False)
    for ax, rel, (model, rows) in zip(axes[0], axes[1], everything.items(), strict=True):
        uni = [(r["sqnr"], r["bits"]) for r in rows if r.get("method") == "uniform step"]
        for method, style in styles.items():
            pts = sorted((r["sqnr"], r["bits"]) for r in rows if r.get("method") == method)
            if pts:
                ax.plot([q for q, _ in pts], [b for _, b in pts], style, label=method, markersize=4)
                near = [(q, 100 * (b / at - 1)) for q, b in pts if (at := at_sqnr(uni, q)) is not None]
                if near:
                    rel.plot([q for q, _ in near], [v for _, v in near], style, label=method, markersize=4)
        gguf = [r for r in rows if str(r.get("method", "")).startswith("GGUF")]
        ax.plot([r["sqnr"] for r in gguf], [r["bits"] for r in gguf], "k*", label="GGUF Q8_0/Q5_0/Q4_0")
        ax.set_title(model)
        ax.set_xlabel("SQNR (dB)")
        ax.set_ylabel("bits / param")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        rel.axhline(0, color="gray", lw=0.8)
        rel.set_xlabel("SQNR (dB)")
        rel.set_ylabel("bits vs pack step:S at the same SQNR (%)")
        rel.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", nargs="+", type=int, default=[6, 7, 8, 9, 10])
    ap.add_argument("--peer-python", default="/tmp/nncvenv/bin/python",
                    help="interpreter with nncodec installed (its own venv, not a ggcompress dependency)")
    ap.add_argument("--dq-qp-offsets", nargs="+", type=int, default=[4, 3],
                    help="NNCodec DQ rows run at qp = -4S - each of these (4: NNCodec's DQ-equivalent "
                         "offset; 4 and 3 bracket plain qp -4S's SQNR)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--nncodec-only", action="store_true", help="skip the ggcompress and GGUF rows")
    only.add_argument("--no-nncodec", action="store_true", help="skip the NNCodec rows")
    ap.add_argument("--rows", choices=["all", "rd"], default="all",
                    help="rd: only the uniform and --target-sqnr rows (seconds; all adds RDOQ, trellis and "
                         "GGUF, minutes)")
    ap.add_argument("--json", help="also write every row here")
    ap.add_argument("--plot", help="also draw bits vs SQNR per model here (PNG)")
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="only draw --plot from saved --json files (no run)")
    args = ap.parse_args()
    if args.render:
        everything = {}
        for f in args.render:
            everything.update(json.loads(Path(f).read_text()))
        plot(everything, Path(args.plot or "pack_rd.png"))
        return
    torch.set_num_threads(1)
    print(f"# bench_pack_rd — ggcompress {__version__}, {date.today()}, {platform.machine()}, "
          f"{os.cpu_count()} shared CPUs, one thread; coder rans everywhere")
    everything = {}
    with tempfile.TemporaryDirectory(prefix="bench-rd-") as tmpdir:
        out = Path(tmpdir) / "x.ggz"
        for model in args.models:
            src = Path(MODELS[model]())
            rows = []
            if not args.nncodec_only:
                for s in args.steps:
                    r = run_pack(src, out, PackOptions(quant=f"step:{s}", coder="rans"))
                    rows.append({"method": "uniform step", "setting": f"step:{s}", **r})
                # targets: each uniform row's SQNR (rounded down, so that step meets it) and the midpoints
                mids = {round((a["sqnr"] + b["sqnr"]) / 2, 2) for a, b in zip(rows, rows[1:], strict=False)}
                targets = sorted({math.floor(r["sqnr"] * 100) / 100 for r in rows} | mids)
                for t in targets:
                    r = run_pack(src, out, PackOptions(target_sqnr_db=t, coder="rans"))
                    rows.append({"method": "RD allocation", "setting": f"--target-sqnr {t}", **r})
                for s in args.steps if args.rows == "all" else []:
                    r = run_pack(src, out, PackOptions(quant=f"step:{s}", coder="rans", rdoq=True))
                    rows.append({"method": "RDOQ", "setting": f"step:{s} --rdoq", **r})
                for s in args.steps if args.rows == "all" else []:
                    r = run_pack(src, out, PackOptions(quant=f"step:{s}", coder="rans", trellis=True))
                    rows.append({"method": "trellis", "setting": f"step:{s} --trellis", **r})
                for t in sorted(mids) if args.rows == "all" else []:
                    r = run_pack(src, out, PackOptions(target_sqnr_db=t, coder="rans", trellis=True))
                    rows.append({"method": "RD + trellis", "setting": f"--target-sqnr {t} --trellis", **r})
                if args.rows == "all":
                    rows += gguf_rows(src)
            if not args.no_nncodec:
                rows += nncodec_rows(args.peer_python, src, args.steps, args.dq_qp_offsets, Path(tmpdir))
            everything[model] = rows
            print(f"\n## {model}\n")
            print("| method | setting | coded bits/param | SQNR dB | encode MB/s (CPU) | decode MB/s (CPU) "
                  "| note |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                if "skipped" in r:
                    print(f"| {r['method']} | | | | | | skipped: {r['skipped']} |")
                    continue
                print(f"| {r['method']} | {r['setting']} | {r['bits']:.3f} | {r['sqnr']:.2f} | "
                      f"{r['mbs']:.{1 if r['mbs'] < 10 else 0}f} | "
                      f"{r['dec_mbs']:.{1 if r['dec_mbs'] < 10 else 0}f} | {r.get('note', '')} |")
            lines = equal_sqnr_lines(rows)
            if lines:
                print()
                print("\n".join(lines))
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    if args.plot:
        plot(everything, Path(args.plot))


if __name__ == "__main__":
    main()

"""Rate vs quality of lossy pack modes side by side: coded bits/param against SQNR.

Rows per model: `pack --quant step:S` (one uniform step), `pack --target-sqnr DB` (rate–distortion
allocation of per-tensor steps, codec/rdalloc.py) at the uniform rows' SQNRs and between them,
`pack --quant step:S --rdoq` (codec/rdoq.py), the GGUF legacy quantizers Q8_0 / Q5_0 / Q4_0 (the `gguf`
package's reference quantizers; their nominal 8.5 / 5.5 / 4.5 bits/param include the fp16 block
scales). NNCodec is listed as not run (see nncodec_row: it could not be installed here).
Every ggcompress row is a real container: bits are its coded payload + tables, SQNR is measured on the
restored weights, speed is source MB per CPU second of `pack` (one thread).
The same tensors everywhere: every float tensor of 2+ dims (GGUF rows: those whose last dim is a
multiple of 32, the block size; the rest are counted and left out of the GGUF figures).

KL / perplexity are not measured here (bench_pack_kl.py measures `--max-kl`). SmolLM2 is dequantized
from a Q4_1 GGUF: its weights sit on a 4-bit lattice, so its figures say little about natural weights.

Run: /work/main/.venv/bin/python benchmarks/bench_pack_rd.py [--models minilm smollm2]
     [--steps 6 7 8 9 10] [--peer-python /tmp/benchvenv-h6/bin/python]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GGCOMPRESS_WORKERS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ggcompress import __version__, fixtures  # noqa: E402
from ggcompress.codec.pack import PackOptions, pack  # noqa: E402
from ggcompress.io.checkpoint import open_checkpoint  # noqa: E402

MODELS = {"minilm": fixtures.minilm, "smollm2": fixtures.smollm2}


def run_pack(src: Path, out: Path, opts: PackOptions) -> dict:
    c0 = time.process_time()
    doc = pack(src, out, opts, force=True)
    cpu = time.process_time() - c0
    s = doc["checkpoints"][0]["summary"]
    return {"bits": s["coded_bits_per_param"], "sqnr": s["sqnr_db"], "mbs": s["source_bytes"] / cpu / 1e6}


def gguf_rows(src: Path) -> list[dict]:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rows = []
    for qt, bits in ((T.Q8_0, 8.5), (T.Q5_0, 5.5), (T.Q4_0, 4.5)):
        sig = err = 0.0
        left = 0
        c0 = time.process_time()
        nbytes = 0
        for info, x in open_checkpoint(src).iter_tensors():
            if not info.is_float or len(info.shape) < 2 or info.numel == 0:
                continue
            if info.shape[-1] % 32:
                left += 1
                continue
            a = x.to(torch.float32).numpy()
            y = quants.dequantize(quants.quantize(a, qt), qt).astype(np.float64)
            a64 = a.astype(np.float64)
            sig += float((a64 * a64).sum())
            err += float(((a64 - y) ** 2).sum())
            nbytes += info.numel * x.element_size()
        cpu = time.process_time() - c0
        rows.append({"method": f"GGUF {qt.name}", "setting": "", "bits": bits,
                     "sqnr": 10 * math.log10(sig / err), "mbs": nbytes / cpu / 1e6,
                     "note": f"{left} tensors with last dim % 32 != 0 left out" if left else ""})
    return rows


def nncodec_row(python: str) -> dict:
    """NNCodec is not driven: `pip install nncodec` (a C++ build) did not complete on the dev machine
    within 20 minutes, so no driver could be tested against it. The row says so instead of guessing
    its API; issue 14 quotes NNCodec's figures from a separate run."""
    have = Path(python).exists() and not subprocess.run([python, "-c", "import nnc"],
                                                        capture_output=True).returncode
    where = "importable" if have else "not installed"
    return {"method": "NNCodec",
            "skipped": f"not run ({where} in {python}; no tested driver, see the docstring)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--steps", nargs="+", type=int, default=[6, 7, 8, 9, 10])
    ap.add_argument("--peer-python", default="/tmp/benchvenv-h6/bin/python")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# bench_pack_rd — ggcompress {__version__}, {date.today()}, {platform.machine()}, "
          f"{os.cpu_count()} shared CPUs, one thread; coder rans everywhere")
    with tempfile.TemporaryDirectory(prefix="bench-rd-") as tmpdir:
        out = Path(tmpdir) / "x.ggz"
        for model in args.models:
            src = Path(MODELS[model]())
            rows = []
            for s in args.steps:
                r = run_pack(src, out, PackOptions(quant=f"step:{s}", coder="rans"))
                rows.append({"method": "uniform step", "setting": f"step:{s}", **r})
            # targets: each uniform row's SQNR (rounded down, so that step meets it) and the midpoints
            mids = {round((a["sqnr"] + b["sqnr"]) / 2, 2) for a, b in zip(rows, rows[1:], strict=False)}
            targets = sorted({math.floor(r["sqnr"] * 100) / 100 for r in rows} | mids)
            for t in targets:
                r = run_pack(src, out, PackOptions(target_sqnr_db=t, coder="rans"))
                rows.append({"method": "RD allocation", "setting": f"--target-sqnr {t}", **r})
            for s in args.steps:
                r = run_pack(src, out, PackOptions(quant=f"step:{s}", coder="rans", rdoq=True))
                rows.append({"method": "RDOQ", "setting": f"step:{s} --rdoq", **r})
            rows += gguf_rows(src)
            rows.append(nncodec_row(args.peer_python))
            print(f"\n## {model}\n")
            print("| method | setting | coded bits/param | SQNR dB | encode MB/s (CPU) | note |")
            print("|---|---|---|---|---|---|")
            for r in rows:
                if "skipped" in r:
                    print(f"| {r['method']} | | | | | skipped: {r['skipped']} |")
                    continue
                print(f"| {r['method']} | {r['setting']} | {r['bits']:.3f} | {r['sqnr']:.2f} | "
                      f"{r['mbs']:.0f} | {r.get('note', '')} |")
            # equal-SQNR comparison: RD rows against the uniform curve interpolated in (SQNR, bits)
            uni = sorted((r["sqnr"], r["bits"]) for r in rows if r.get("method") == "uniform step")
            print()
            for r in rows:
                if r.get("method") not in ("RD allocation", "RDOQ"):
                    continue
                cheapest = min((b for q, b in uni if q >= r["sqnr"] - 0.005), default=None)
                interp = float(np.interp(r["sqnr"], [q for q, _ in uni], [b for _, b in uni]))
                note = (f"vs the cheapest uniform step meeting its SQNR: {r['bits'] / cheapest - 1:+.1%}"
                        if cheapest else "no uniform step reaches its SQNR")
                print(f"- {r['method']} {r['setting']}: {note}; vs the uniform curve interpolated at "
                      f"{r['sqnr']:.2f} dB: {r['bits'] / interp - 1:+.2%}")


if __name__ == "__main__":
    main()

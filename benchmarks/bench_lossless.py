"""Lossless size and speed: `pack --quant none` against ZipNN and zstd (-3 / -19) on the same weights.

For each checkpoint (MiniLM fp32, SmolLM2 bf16, and a synthetic generalized-Gaussian checkpoint in fp32
and bf16) it reports the compressed size of the tensor bytes relative to their source size, and
compress / decompress speed in MB of source tensor bytes per CPU second, all on one thread
(OMP_NUM_THREADS=1, ZipNN threads=1, ggcompress workers=1, zstd single-threaded), in one run.

Peers are never runtime dependencies: they run in a separate interpreter (``--peer-python``, default
/tmp/benchvenv-h6/bin/python, a venv with ``pip install zipnn zstandard``) that this script calls in its
peer mode (which imports only numpy and the peer). A peer that is not installed is skipped and said so.

What is compressed, for every tool: the checkpoint's tensors (carried config/tokenizer files are left
out of every figure). ggcompress: the .ggz container minus its carried files (so its JSON header and
preamble count); decompression = reading and verifying every tensor (``read_packed``). ZipNN: one
``ZipNN(bytearray_dtype=<the tensor's dtype>)`` call per float tensor (its documented per-tensor use;
integer tensors counted at their raw size); zstd: the whole safetensors file at once.

Run: /work/main/.venv/bin/python benchmarks/bench_lossless.py [--models minilm smollm2 gg-f32 gg-bf16]
     [--zstd-levels 3 19] [--peer-python PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["GGCOMPRESS_WORKERS"] = "1"  # lossless chunk threads (read_packed's decoder included)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

DEFAULT_PEER_PYTHON = "/tmp/benchvenv-h6/bin/python"
ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


# ------------------------------------------------------------------------ peer mode (numpy + peer only)


def _tensors(path: Path) -> tuple[bytes, list[tuple[str, memoryview]]]:
    """The safetensors file's bytes and (dtype, data bytes) of each tensor, parsed without safetensors."""
    blob = path.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    base = 8 + hlen
    view = memoryview(blob)
    out = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        a, b = spec["data_offsets"]
        out.append((spec["dtype"], view[base + a:base + b]))
    return blob, out


def _cpu(fn):
    c0 = time.process_time()
    result = fn()
    return time.process_time() - c0, result


def peer_main(tool: str, path: Path, level: int) -> dict:
    """Compress and decompress with one peer; a JSON-able dict of sizes and CPU seconds."""
    blob, tensors = _tensors(path)
    tensor_bytes = sum(len(d) for _, d in tensors)
    if tool == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level, threads=0)
        t_c, comp = _cpu(lambda: cctx.compress(blob))
        t_d, back = _cpu(lambda: zstandard.ZstdDecompressor().decompress(comp))
        ok = back == blob
        # the file's own header is ~0.01% of it; scale to tensor bytes so every tool has one base
        size = len(comp) * tensor_bytes / len(blob)
        return {"tool": f"zstd -{level}", "bytes": size, "source": tensor_bytes, "compress_cpu": t_c,
                "decompress_cpu": t_d, "exact": ok, "version": zstandard.__version__}
    if tool == "zipnn":
        import warnings

        warnings.filterwarnings("ignore")
        from importlib.metadata import version

        from zipnn import ZipNN

        coders = {dt: ZipNN(bytearray_dtype=z, threads=1) for dt, z in ZIPNN_DTYPES.items()}
        size = 0
        t_c = t_d = 0.0
        ok = True
        for dtype, data in tensors:
            if dtype not in coders or len(data) == 0:
                size += len(data)
                continue
            raw = bytes(data)
            dt, comp = _cpu(lambda raw=raw, dtype=dtype: coders[dtype].compress(raw))
            t_c += dt
            dt, back = _cpu(lambda comp=comp, dtype=dtype: coders[dtype].decompress(comp))
            t_d += dt
            size += len(comp)
            # compare with the file's bytes: ZipNN 0.5.4's compress rewrites its input buffer in place
            ok = ok and bytes(memoryview(back).cast("B")) == bytes(data)
        return {"tool": "ZipNN", "bytes": size, "source": tensor_bytes, "compress_cpu": t_c,
                "decompress_cpu": t_d, "exact": ok, "version": version("zipnn")}
    raise SystemExit(f"unknown peer {tool}")


def run_peer(python: str, tool: str, path: Path, level: int = 0) -> dict:
    """Run a peer in its own interpreter; {'skipped': reason} when it is not installed there."""
    module = {"zstd": "zstandard", "zipnn": "zipnn"}[tool]
    if not Path(python).exists():
        return {"tool": tool, "skipped": f"no peer interpreter {python} (create a venv with {module})"}
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode:
        return {"tool": tool, "skipped": f"{module} is not installed in {python}"}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([python, __file__, "--peer", tool, str(path), str(level)], capture_output=True,
                         text=True, env=env)
    if res.returncode:
        return {"tool": tool, "skipped": f"{tool} failed: {res.stderr.strip().splitlines()[-1:]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- ggcompress side


def synthetic(folder: Path, dtype_name: str) -> Path:
    """A GG checkpoint: 12 matrices 1024 x 1024 with shapes β in 0.6..1.6, std 0.02, seed 0."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rng = np.random.default_rng(0)
    tensors = {}
    for i, beta in enumerate(np.linspace(0.6, 1.6, 12)):
        mag = rng.gamma(1 / beta, 1.0, 1 << 20) ** (1 / beta)
        x = np.where(rng.random(1 << 20) < 0.5, -mag, mag)
        x *= 0.02 / x.std()
        tensors[f"layer.{i}.weight"] = torch.from_numpy(x).reshape(1024, 1024).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def bench_ggcompress(folder: Path, tmp: Path) -> dict:
    import torch

    from ggcompress.codec.pack import PackOptions, pack, read_packed

    torch.set_num_threads(1)

    out = tmp / "x.ggz"
    t_c, doc = _cpu(lambda: pack(folder, out, PackOptions(quant="none", workers=1), force=True))
    s = doc["checkpoints"][0]["summary"]

    def read_all() -> int:
        return sum(t.numel() for _, t in read_packed(out))

    t_d, _ = _cpu(read_all)
    return {"tool": "ggcompress --quant none", "bytes": s["container_bytes"] - s["file_bytes"],
            "source": s["source_bytes"], "compress_cpu": t_c, "decompress_cpu": t_d, "exact": True,
            "bits_per_param": 8 * (s["container_bytes"] - s["file_bytes"]) / s["params"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "smollm2", "gg-f32", "gg-bf16"])
    ap.add_argument("--zstd-levels", nargs="*", type=int, default=[3, 19])
    ap.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from ggcompress import __version__, fixtures

    sources = {"minilm": fixtures.minilm, "smollm2": fixtures.smollm2}
    machine = platform.processor() or platform.machine()
    print(f"# bench_lossless — ggcompress {__version__}, {date.today()}, {machine}, {os.cpu_count()} CPUs "
          "(shared: figures are MB of source tensor bytes per CPU second, one thread)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-lossless-") as tmpdir:
        tmp = Path(tmpdir)
        for model in args.models:
            if model in sources:
                folder = Path(sources[model]())
            else:
                folder = synthetic(tmp / model, model.split("-", 1)[1])
            st = folder / "model.safetensors"
            results = [bench_ggcompress(folder, tmp), run_peer(args.peer_python, "zipnn", st)]
            results += [run_peer(args.peer_python, "zstd", st, lvl) for lvl in args.zstd_levels]
            print(f"\n## {model} ({st.stat().st_size / 1e6:.1f} MB)\n")
            print("| tool | size / source | bits/param | compress MB/s | decompress MB/s | exact |")
            print("|---|---|---|---|---|---|")
            zipnn = next((r for r in results if r.get("tool") == "ZipNN"), None)
            for r in results:
                r["model"] = model
                rows.append(r)
                if "skipped" in r:
                    print(f"| {r['tool']} | skipped: {r['skipped']} | | | | |")
                    continue
                ratio = r["bytes"] / r["source"]
                bpp = r.get("bits_per_param")
                mbs = [r["source"] / r[k] / 1e6 for k in ("compress_cpu", "decompress_cpu")]
                print(f"| {r['tool']} | {ratio:.4f} | {'' if bpp is None else f'{bpp:.3f}'} | "
                      f"{mbs[0]:.0f} | {mbs[1]:.0f} | {r['exact']} |")
            gg = results[0]
            if zipnn is not None and "skipped" not in zipnn:
                smaller = gg["bytes"] < zipnn["bytes"]
                print(f"\ntarget smaller than ZipNN: {'met' if smaller else 'NOT met'} "
                      f"({gg['bytes'] / zipnn['bytes'] - 1:+.2%}); speed vs ZipNN: compress "
                      f"{zipnn['compress_cpu'] / gg['compress_cpu']:.2f}x, decompress "
                      f"{zipnn['decompress_cpu'] / gg['decompress_cpu']:.2f}x")
            else:
                print("\ntarget smaller than ZipNN: not measured (ZipNN skipped)")
            fast = all(gg["source"] / gg[k] / 1e6 >= 100 for k in ("compress_cpu", "decompress_cpu"))
            print(f"target >= 100 MB/s each way on one core: {'met' if fast else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--peer":
        print(json.dumps(peer_main(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()

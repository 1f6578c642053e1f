"""Drive NNCodec (the MPEG NNR reference codec) on a set of float32 tensors: compress, decompress, measure.

Run BY the interpreter that has NNCodec installed (a peer venv, never a ggcompress dependency), as a
subprocess of benchmarks/bench_pack_rd.py; it imports only numpy and nncodec, no ggcompress.

Input: an .npz of float32 arrays (the tensors, any keys; each is coded as one NNR tensor; arrays of 2+
dims are NNR "weight"s and get the qp asked for). For every ``--run QP:DQ`` it calls NNCodec's public
``nncodec.nnc.compress(dict of numpy arrays, qp=QP, qp_density=..., use_dq=DQ, ...)`` with every other
argument at that function's default (lambda_scale 0, param_opt on, row_skipping / tca / opt_qp / lsa /
bnf / ioq / fine-tuning off, codebook_mode 0 = uniform), then ``nncodec.nnc.decompress(bitstream)``.
The quantizer step is ``(k + (qp & (k-1))) * 2**((qp >> qp_density) - qp_density)`` with
``k = 2**qp_density`` (deepCABAC bindings.cpp), so at qp_density 2, qp = -4S is a step of exactly 2^-S.
With dependent quantization that step is the spacing of the union of NNCodec's two quantizers (each
quantizer is 2× coarser), so DQ at a given qp is ~4.7 dB below plain at that qp; NNCodec itself treats
DQ at qp as equivalent to plain at qp - 2**qp_density (nnc_core.common.compute_qp_offset_to_dq_equivalent).

``nncodec.nnc`` imports ``nncodec.framework`` (the PyTorch/TensorFlow model adapters and their image
dataset loaders: torchvision, ...) at module level but ``compress`` / ``decompress`` on a dict of arrays
never touch it, so the driver always registers an empty ``nncodec.framework`` before importing
``nncodec.nnc`` instead of installing those packages (nor importing torch).

Output (``--json``, and the last stdout line): per run the total bitstream bytes, the CPU seconds
(time.process_time, one thread) of compress and of decompress, and the signal and squared-error
energies sum(x^2), sum((x - x')^2) over exactly the given tensors in float64, so
SQNR = 10 log10(signal / error).

Run: /tmp/nncvenv/bin/python benchmarks/peers/nncodec_driver.py TENSORS.npz --run=-32:0 --run=-36:1
     [--qp-density 2] [--json OUT.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402


def _import_nnc() -> types.ModuleType:
    """nncodec.nnc without nncodec.framework (model adapters that pull torchvision and friends)."""
    stub = types.ModuleType("nncodec.framework")
    stub.__doc__ = "placeholder: compress/decompress of a dict of arrays do not use the model adapters"
    for name in ("tensorflow_model", "pytorch_model", "use_case_init"):
        setattr(stub, name, types.ModuleType(f"nncodec.framework.{name}"))
    sys.modules["nncodec.framework"] = stub
    import nncodec.nnc as nnc

    if "torch" in sys.modules:  # not imported on this path; keep it at one thread if something did
        sys.modules["torch"].set_num_threads(1)
    return nnc


def run_one(nnc: types.ModuleType, tensors: dict[str, np.ndarray], qp: int, dq: bool, qp_density: int
            ) -> dict:
    """One compress + decompress round trip at (qp, dq), measured on one thread."""
    c0 = time.process_time()
    bitstream = nnc.compress(tensors, bitstream_path=None, qp=qp, qp_density=qp_density, use_dq=dq,
                             return_bitstream=True, verbose=False)
    enc = time.process_time() - c0
    c0 = time.process_time()
    restored = nnc.decompress(bytearray(bitstream), verbose=False)
    dec = time.process_time() - c0
    if set(restored) != set(tensors):
        raise SystemExit(f"NNCodec restored {sorted(set(restored) ^ set(tensors))[:5]} unlike the input")
    sig = err = 0.0
    for name, x in tensors.items():
        y = np.asarray(restored[name])
        if y.shape != x.shape:
            raise SystemExit(f"{name}: restored shape {y.shape} != {x.shape}")
        x64 = x.astype(np.float64)
        sig += float(np.dot(x64.ravel(), x64.ravel()))
        d = x64 - y.astype(np.float64)
        err += float(np.dot(d.ravel(), d.ravel()))
        del x64, d
    del restored
    return {"qp": qp, "dq": dq, "qp_density": qp_density, "bytes": len(bitstream),
            "encode_cpu_s": enc, "decode_cpu_s": dec, "signal": sig, "error": err,
            "sqnr_db": 10 * math.log10(sig / err) if err > 0 else math.inf}


def _run_spec(text: str) -> tuple[int, bool]:
    qp, _, dq = text.partition(":")
    if dq not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"--run wants QP:0 or QP:1 (dependent quantization off / on), "
                                         f"not {text}")
    return int(qp), dq == "1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", help=".npz of float32 arrays, the tensors to code")
    ap.add_argument("--run", action="append", type=_run_spec, required=True, metavar="QP:DQ",
                    help="one round trip at this qp, dependent quantization 0 (off) or 1 (on); repeatable; "
                         "write --run=-32:0 (a negative qp after a space reads as an option)")
    ap.add_argument("--qp-density", type=int, default=2)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    nnc = _import_nnc()
    with np.load(args.npz) as z:
        tensors = {k: np.ascontiguousarray(z[k]) for k in z.files}
    bad = [k for k, v in tensors.items() if v.dtype != np.float32]
    if bad:
        raise SystemExit(f"not float32: {bad[:5]}")
    doc = {"tool": "nncodec", "version": version("nncodec"), "tensors": len(tensors),
           "params": int(sum(v.size for v in tensors.values())), "runs": []}
    for qp, dq in args.run:
        r = run_one(nnc, tensors, qp, dq, args.qp_density)
        r["bits_per_param"] = 8 * r["bytes"] / doc["params"]
        doc["runs"].append(r)
        print(f"qp {qp} dq {int(dq)}: {r['bits_per_param']:.4f} bits/param, {r['sqnr_db']:.3f} dB, "
              f"encode {r['encode_cpu_s']:.1f} s, decode {r['decode_cpu_s']:.1f} s CPU", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()

"""Standard low-bit weight formats, for measuring GF-k against them at equal bits per weight.

Each baseline is a round trip ``w -> stored form -> decoded float32`` plus the exact stored size (codes,
scales, zero points, tables), so comparisons are at equal bits *including* the metadata:

- ``int{k}_sym`` / ``int{k}_asym`` per block of N: round-to-nearest on 2^k - 1 symmetric levels with a
  float32 scale amax / (2^(k-1) - 1), or 2^k levels between min and max (float32 scale + float32 min);
- ``nf4``: the bitsandbytes NF4 table (QLoRA, Dettmers et al. 2023), float32 absmax per block of 64;
- ``fp4``: FP4 E2M1 (values 0, 0.5, 1, 1.5, 2, 3, 4, 6) with a float32 scale amax / 6 per block;
- ``mxfp4``, ``q4_0``, ``q4_1``, ``q5_0``, ``q8_0``: the GGUF/OCP block formats, quantized and
  dequantized by the ``gguf`` package's numpy reference (``gguf.quants``), sizes from GGML_QUANT_SIZES;
- 8-bit per-channel ``int8``, ``fp8_e4m3``, ``rf8``: the ggcompress codecs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ggcompress.errors import GGError
from ggcompress.formats.base import Granularity, as_matrix, expand_scale, group_amax, group_view

# bitsandbytes NF4 code book (bitsandbytes/functional.py, create_normal_map / the 4-bit NF4 data table).
NF4_TABLE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.2461123913526535, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0)
FP4_E2M1 = (-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
GGUF_FORMATS = ("q4_0", "q4_1", "q5_0", "q8_0", "mxfp4")


@dataclass
class RoundTrip:
    """A baseline's decoded weight and what storing it costs."""

    decoded: torch.Tensor  # float32, w's shape
    stored_bytes: int

    def bits_per_weight(self, n: int) -> float:
        return 8.0 * self.stored_bytes / n if n else 0.0


def _table_round_trip(w2: torch.Tensor, gran: Granularity, table: tuple[float, ...],
                      top: float) -> torch.Tensor:
    """Nearest level of ``table`` for w / (amax / top), decoded; float32."""
    t = torch.tensor(table, dtype=torch.float32)
    amax = group_amax(w2, gran)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    rows, cols = w2.shape
    s = expand_scale(scale, gran, 0, rows, cols)
    z = w2.to(torch.float32) / s
    mids = (t[1:] + t[:-1]) / 2
    return t[torch.bucketize(z, mids)] * s


def int_sym(w: torch.Tensor, bits: int, block: int) -> RoundTrip:
    """Symmetric INT-k per block: q in [-(2^(k-1)-1), 2^(k-1)-1], float32 scale amax / qmax."""
    w2 = as_matrix(w, "int_sym").to(torch.float32)
    qmax = (1 << (bits - 1)) - 1
    gran = Granularity("block", block)
    dec = _table_round_trip(w2, gran, tuple(float(i) for i in range(-qmax, qmax + 1)), float(qmax))
    rows, cols = w2.shape
    return RoundTrip(dec.reshape(w.shape), -(-rows * cols * bits // 8) + 4 * rows * gran.n_groups(cols))


def int_asym(w: torch.Tensor, bits: int, block: int) -> RoundTrip:
    """Asymmetric INT-k per block: 2^k levels from the block min to max (float32 scale and min)."""
    w2 = as_matrix(w, "int_asym").to(torch.float32)
    rows, cols = w2.shape
    gran = Granularity("block", block)
    g = group_view(w2, gran)  # (rows, G, N), zero-padded
    pad = gran.n_groups(cols) * block - cols
    valid = torch.ones(cols, dtype=torch.bool)
    valid = torch.nn.functional.pad(valid, (0, pad)).view(1, -1, block)
    lo = torch.where(valid, g, torch.full_like(g, float("inf"))).amin(dim=2, keepdim=True)
    hi = torch.where(valid, g, torch.full_like(g, float("-inf"))).amax(dim=2, keepdim=True)
    levels = (1 << bits) - 1
    scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
    q = torch.round((g - lo) / scale).clamp(0, levels)
    dec = (q * scale + lo).reshape(rows, -1)[:, :cols]
    return RoundTrip(dec.reshape(w.shape), -(-rows * cols * bits // 8) + 8 * rows * gran.n_groups(cols))


def nf4(w: torch.Tensor, block: int = 64) -> RoundTrip:
    """bitsandbytes NF4: nearest NF4 level of w / absmax, float32 absmax per block."""
    w2 = as_matrix(w, "nf4").to(torch.float32)
    rows, cols = w2.shape
    gran = Granularity("block", block)
    dec = _table_round_trip(w2, gran, NF4_TABLE, 1.0)
    return RoundTrip(dec.reshape(w.shape), -(-rows * cols // 2) + 4 * rows * gran.n_groups(cols))


def fp4(w: torch.Tensor, block: int = 32) -> RoundTrip:
    """FP4 E2M1 with a float32 scale amax / 6 per block (round to nearest, ties to the lower level)."""
    w2 = as_matrix(w, "fp4").to(torch.float32)
    rows, cols = w2.shape
    gran = Granularity("block", block)
    dec = _table_round_trip(w2, gran, FP4_E2M1, 6.0)
    return RoundTrip(dec.reshape(w.shape), -(-rows * cols // 2) + 4 * rows * gran.n_groups(cols))


def gguf_round_trip(w: torch.Tensor, fmt: str) -> RoundTrip:
    """Quantize + dequantize with the ``gguf`` package's numpy reference (rows padded to the block)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf import quants as gq

    qtype = getattr(GGMLQuantizationType, fmt.upper(), None)
    if qtype is None or qtype not in GGML_QUANT_SIZES:
        raise GGError(f"the installed gguf package has no {fmt.upper()}; upgrade it (pip install -U gguf)")
    block, type_size = GGML_QUANT_SIZES[qtype]
    w2 = as_matrix(w, fmt).to(torch.float32)
    rows, cols = w2.shape
    padded = -(-cols // block) * block
    x = torch.nn.functional.pad(w2, (0, padded - cols)).numpy().astype(np.float32)
    data = gq.quantize(x, qtype)
    dec = torch.from_numpy(np.asarray(gq.dequantize(data, qtype), dtype=np.float32))[:, :cols]
    return RoundTrip(dec.reshape(w.shape).clone(), rows * (padded // block) * type_size)


def codec_round_trip(w: torch.Tensor, fmt: str, granularity: str = "channel") -> RoundTrip:
    """An 8-bit ggcompress codec (int8, fp8_e4m3, rf8) round trip."""
    from ggcompress.formats import get_codec

    codec = get_codec(fmt)
    q = codec.encode(w, granularity)
    return RoundTrip(codec.decode(q), q.codes.numel() + 4 * q.scale.numel())


def baseline(name: str) -> Callable[[torch.Tensor], RoundTrip]:
    """The round trip of a baseline named like ``int4_sym@64``, ``nf4``, ``q4_0``, ``int8``."""
    key, _, size = name.partition("@")
    block = int(size) if size else None
    if key in GGUF_FORMATS:
        return lambda w: gguf_round_trip(w, key)
    if key == "nf4":
        return lambda w: nf4(w, block or 64)
    if key == "fp4":
        return lambda w: fp4(w, block or 32)
    if key in ("int8", "fp8_e4m3", "rf8"):
        return lambda w: codec_round_trip(w, key, f"block:{block}" if block else "channel")
    for kind in ("sym", "asym"):
        if key.startswith("int") and key.endswith("_" + kind):
            bits = int(key[3:-len(kind) - 1])
            fn = int_sym if kind == "sym" else int_asym
            return lambda w, b=bits: fn(w, b, block or 64)
    raise GGError(f"unknown baseline format {name!r}")

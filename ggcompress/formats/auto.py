"""``--format auto --bits B``: per tensor, the stored format with the least error within B bits/weight.

Why per tensor: tensors differ (outlier rows, width), so the best k / granularity / table at a given size
differs too. Candidates are each format family (gf3, gf4, gf5, gf6, gf8, int8, fp8_e4m3, rf8) at the
finest granularity (block:16, 32, 64, 128, then channel) whose exact stored size — codes, scales,
table, shape — fits B; each is encoded and the one with the smallest error energy wins (ties: the
earlier, smaller family).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ggcompress.errors import GGError
from ggcompress.formats.base import matrix_shape, parse_granularity
from ggcompress.formats.gf import GF_FORMATS, gf_bits
from ggcompress.formats.packing import packed_cols

FAMILIES = (*GF_FORMATS, "int8", "fp8_e4m3", "rf8")
GRANULARITIES = ("block:16", "block:32", "block:64", "block:128", "channel")


def stored_bits(fmt: str, granularity: str, shape: tuple[int, ...]) -> float:
    """Exact stored bits per weight of ``fmt`` at ``granularity`` for a tensor of ``shape``."""
    rows, cols = matrix_shape(shape)
    n_scales = parse_granularity(granularity).scale_shape(rows, cols)
    scales = n_scales[0] * n_scales[1]
    if fmt in GF_FORMATS:
        k = gf_bits(fmt)
        total = 8 * rows * packed_cols(cols, k) + 16 * scales + 32 * (1 << k) + 64 * len(shape)
    else:
        total = 8 * rows * cols + 32 * scales
    return total / (rows * cols)


@dataclass(frozen=True)
class Candidate:
    format: str
    granularity: str
    bits_per_weight: float


def candidates(budget: float, shape: tuple[int, ...]) -> list[Candidate]:
    """One candidate per format family: its finest granularity within ``budget`` bits per weight."""
    out = []
    for fmt in FAMILIES:
        for gran in GRANULARITIES:
            bits = stored_bits(fmt, gran, shape)
            if bits <= budget:
                out.append(Candidate(fmt, gran, bits))
                break
    return out


def choose(w: torch.Tensor, budget: float, name: str = "") -> tuple[Candidate, object, dict]:
    """(the winning candidate, its encoded tensor, its error stats) for ``w`` within ``budget`` bits."""
    from ggcompress.formats.quantize import measure

    options = candidates(budget, tuple(w.shape))
    if not options:
        smallest = min(stored_bits(f, "channel", tuple(w.shape)) for f in FAMILIES)
        raise GGError(f"{name or '<tensor>'}: --bits {budget:g} is below every format's size for shape "
                      f"{list(w.shape)} (smallest: {smallest:.3f} bits/weight); raise --bits")
    best = None
    for cand in options:
        q, stats = measure(cand.format, w, cand.granularity, name)
        if best is None or stats["noise_energy"] < best[2]["noise_energy"]:
            best = (cand, q, stats)
        del q
    return best

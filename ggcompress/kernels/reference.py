"""The 8-bit LUT decode rule in plain torch: operand checks, dequantization, and the CPU matmul path.

Decode rule shared by RF8, FP8 and INT8 weights: ``W[n, k] = lut[codes[n, k]] * scale[n', k // B]`` with
``n' = n`` for per-row scales and ``0`` when ``scale`` has one row, ``B = K`` for tensor/channel
granularity. The torch path decodes the weight in row chunks so that it never holds more than a bounded
float copy of a large weight: the point of 1-byte weights is memory, so nothing is cached between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ggcompress.errors import GGError

# Largest decoded chunk (elements) the torch path materializes at once. CPU: 256 Ki elements (1 MiB
# fp32) stays in L2 for the matmul that follows and keeps each temporary below the sizes at which glibc
# malloc hands memory back to the OS on every free; measured on a 576x1536 block:32 layer, 4 Mi-element
# chunks were 3.5x slower from page faults alone. CUDA: 16 Mi elements, so a big layer takes a few
# launches, not hundreds.
CHUNK_ELEMENTS = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 24

# Scale modes (shared with the Triton kernels): one scale per row over all of K, one per row per
# K-tile (block size a multiple of the tile), or one that varies inside a tile.
SCALE_ROW, SCALE_TILE, SCALE_ELEMENT = 0, 1, 2


@dataclass(frozen=True)
class LutOperands:
    """Checked shapes of one LUT-coded weight: N out, K in, block size B (K if unblocked), G groups."""

    out_features: int
    in_features: int
    block: int
    groups: int
    bits: int = 8  # code width; below 8 the codes are packed (docs/gf.md §3), (N, ceil(K * bits / 8))


def check_operands(
    codes: torch.Tensor, scale: torch.Tensor, lut: torch.Tensor, block_size: int | None, name: str = "weight",
    *, bits: int = 8, in_features: int | None = None,
) -> LutOperands:
    """Validate codes/scale/lut against the decode rule; raise one clear GGError line naming ``name``.

    ``bits`` < 8: codes are k-bit packed rows (docs/gf.md §3) and ``in_features`` (K) must be given.
    """
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise GGError(f"{name}: codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    n, k = codes.shape
    if bits != 8:
        if bits not in range(1, 8) or in_features is None:
            raise GGError(f"{name}: packed codes need bits in 1..7 and in_features (got {bits}, "
                          f"{in_features})")
        if k != -(-in_features * bits // 8):
            raise GGError(f"{name}: {k} packed bytes per row do not hold {in_features} codes of {bits} bits")
        k = in_features
    if lut.dim() != 1 or lut.numel() != 256 or not lut.is_floating_point():
        raise GGError(f"{name}: lut must be 256 floats, got {lut.dtype} {tuple(lut.shape)}")
    if block_size is None:
        block, groups = max(k, 1), 1
    else:
        if block_size < 1:
            raise GGError(f"{name}: block size must be a positive integer, got {block_size}")
        block, groups = int(block_size), -(-k // int(block_size))
    shape_ok = scale.dim() == 2 and scale.shape[0] in (1, n) and scale.shape[1] == groups
    if not shape_ok or not scale.is_floating_point():
        raise GGError(
            f"{name}: scale must be float of shape (1 or {n}, {groups}) for codes {tuple(codes.shape)} "
            f"and block size {block_size}, got {scale.dtype} {tuple(scale.shape)}"
        )
    return LutOperands(out_features=n, in_features=k, block=block, groups=groups, bits=bits)


def dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    lut: torch.Tensor,
    block_size: int | None,
    dtype: torch.dtype = torch.float32,
    *,
    bits: int = 8,
    in_features: int | None = None,
) -> torch.Tensor:
    """Full weight ``lut[codes] * scale`` as a dense (N, K) tensor of ``dtype`` (``bits`` < 8: packed codes).

    Decoded in float32 (float64 if asked), then rounded once to ``dtype``. For debugging, tests and the
    dequantize-then-matmul baseline; inference uses ``lut_linear_torch``, which never holds all of W.
    """
    ops = check_operands(codes, scale, lut, block_size, bits=bits, in_features=in_features)
    decode = torch.promote_types(torch.float32, dtype)
    out = torch.empty((ops.out_features, ops.in_features), dtype=dtype, device=codes.device)
    lut_d = lut.to(decode)
    rows = _chunk_rows(codes.device, ops.in_features)
    for n0 in range(0, ops.out_features, rows):
        n1 = min(n0 + rows, ops.out_features)
        out[n0:n1] = _decode_rows(codes, scale, lut_d, ops, n0, n1, with_scale=True)
    return out


def _chunk_rows(device: torch.device, in_features: int) -> int:
    """Rows of W decoded per chunk on this device (see CHUNK_ELEMENTS)."""
    budget = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CHUNK_ELEMENTS
    return max(1, budget // max(in_features, 1))


def _gather(lut: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``lut[codes]`` for a uint8 (rows, K) block; index_select avoids uint8 being read as a boolean mask."""
    return lut.index_select(0, codes.reshape(-1).to(torch.int32)).view(codes.shape)


def _decode_rows(
    codes: torch.Tensor,
    scale: torch.Tensor,
    lut: torch.Tensor,
    ops: LutOperands,
    n0: int,
    n1: int,
    with_scale: bool,
) -> torch.Tensor:
    """Rows n0:n1 of W in lut's dtype: scaled per element if ``with_scale``, else the raw LUT values."""
    rows_codes = codes[n0:n1]
    if ops.bits != 8:
        from ggcompress.formats.packing import unpack_codes

        rows_codes = unpack_codes(rows_codes, ops.bits, ops.in_features)
    w = _gather(lut, rows_codes)  # (rows, K)
    if not with_scale:
        return w
    s = scale[n0:n1] if scale.shape[0] > 1 else scale  # (rows or 1, G)
    s = s.to(w.dtype)
    if ops.groups == 1:
        return w.mul_(s)
    # Scale whole blocks through a (rows, G, B) view (no expanded copy of the scale), then the tail.
    full = (ops.in_features // ops.block) * ops.block
    if full:
        w[:, :full].view(w.shape[0], -1, ops.block).mul_(s[:, : full // ops.block, None])
    if full < ops.in_features:
        w[:, full:].mul_(s[:, -1:])
    return w


def lut_linear_torch(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    lut: torch.Tensor,
    block_size: int | None,
    bias: torch.Tensor | None = None,
    *,
    bits: int = 8,
) -> torch.Tensor:
    """``x @ W.T + bias`` with W decoded chunk by chunk; x is (..., K), output in x's dtype.

    ``bits`` < 8: ``codes`` are k-bit packed rows, unpacked chunk by chunk (K is x's last dimension).

    Each chunk's matmul runs in x's dtype (bf16/fp16 GEMMs accumulate in fp32), except fp16 on the CPU,
    which runs in fp32 (CPU fp16 GEMMs are slow). With one scale group per row the chunk holds raw LUT
    values, exact in bf16 for RF8/FP8/INT8 tables (at most 8 significant bits), and the scale is
    applied to the result in fp32; a half-precision output is then rounded twice (matmul, then scale).
    Block scales are multiplied in fp32 and the weight rounded once to the compute dtype.
    """
    ops = check_operands(codes, scale, lut, block_size, bits=bits, in_features=x.shape[-1])
    if x.shape[-1] != ops.in_features:
        raise GGError(f"weight: input has {x.shape[-1]} features, codes expect {ops.in_features}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, ops.in_features)  # (M, K)
    compute = x.dtype
    if compute not in (torch.float32, torch.bfloat16, torch.float16) or (
        compute == torch.float16 and x.device.type == "cpu"
    ):
        compute = torch.float32
    xc = x2.to(compute)
    row_scale = ops.groups == 1
    # The LUT in the compute dtype when the scale is applied afterwards (exact for tables with <= 8
    # significant bits); block scales are applied in fp32 first and the product rounded once.
    lut_c = lut.to(compute) if row_scale else lut.to(torch.float32)
    rows = _chunk_rows(codes.device, ops.in_features)
    parts = []
    for n0 in range(0, ops.out_features, rows):
        n1 = min(n0 + rows, ops.out_features)
        w = _decode_rows(codes, scale, lut_c, ops, n0, n1, with_scale=not row_scale).to(compute)  # (rows, K)
        parts.append(torch.matmul(xc, w.t()))  # (M, rows)
    if len(parts) == 1:
        y = parts[0]  # (M, N)
    else:  # several chunks, or none when N == 0
        y = torch.cat(parts, dim=1) if parts else xc.new_zeros((x2.shape[0], 0))
    if row_scale or bias is not None:
        y = y.to(torch.float32)
        if row_scale:
            y = y * scale.reshape(1, -1).to(torch.float32)
        if bias is not None:
            y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*lead, ops.out_features)

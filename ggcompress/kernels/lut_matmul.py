"""Triton kernels for ``y = x @ W.T + bias`` with W decoded from 8-bit LUT codes inside the kernel.

W never exists in memory: each program loads a tile of codes, looks each up in the table (up to 256
fp32 entries, loaded once per program and indexed with ``tl.gather``; one global load per weight was
the first design and measured 0.89-1.8x the time on the GEMV and 1.5-7.7x on the GEMM path, H200), applies
the scale and multiplies. At batch 1 a linear layer is bound by weight bytes, so reading 1 byte per
weight instead of 2 is the whole possible win (ideal 2x over bf16).

Two paths share one ``dequantize`` helper:
- GEMV (one row of x): no tensor cores; each program owns BLOCK_N output features and decodes a
  (BLOCK_N, BLOCK_K) weight tile.
- GEMM (two rows and more): tiled ``tl.dot`` with a grouped program order for L2 reuse.

Numerics: the LUT gather is fp32 and accumulation is fp32. The scale is applied to the fp32 partial
sums whenever it is constant over a tile (per-row, per-tensor, or block size a multiple of BLOCK_K),
so the dot only sees raw LUT values. GEMV: x is upcast to fp32 and multiplied with fp32 FMAs (exact
products). GEMM with bf16/fp16 x: W enters the tensor cores in x's dtype (``half_dot``), which is exact
for RF8, FP8 and INT8 tables (at most 8 significant bits) and rounds GF tables to x's precision, the
same rounding the torch path's dequantize-then-matmul applies; with ``half_dot=False`` W goes in as
TF32 (exact for tables of up to 11 significant bits). fp32 x uses an IEEE fp32 dot. The Triton
interpreter (TRITON_INTERPRET=1, used by the tests) computes bf16 arithmetic and float down-casts
wrongly, so there the dot stays fp32, the output buffer is fp32 and the cast to x's dtype happens in
torch; on a GPU the kernel stores x's dtype directly (one launch, no extra pass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ggcompress.errors import GGError
from ggcompress.kernels.reference import SCALE_ELEMENT, SCALE_ROW, SCALE_TILE, check_operands

# Batches up to this size take the GEMV path. Measured on an H200, a tensor-core tile padded to 16 rows
# already beats the FMA GEMV at 16 rows by 13x, so only single-row calls (decode at batch 1) use it.
GEMV_MAX_M = 1


@triton.jit
def dequantize(
    codes_ptr, lut_ptr, lut_vals, scale_ptr, n_idx, k_idx, mask,
    stride_cn, stride_ck, stride_sn, stride_sg, block_size, row_bytes,
    SCALE_MODE: tl.constexpr, BITS: tl.constexpr, LUT_GATHER: tl.constexpr,
):
    """Decode a tile of codes to fp32: ``lut[code]``, times the element's scale when it varies in the tile.

    ``n_idx``/``k_idx`` are broadcastable index tensors giving the tile's layout, so the GEMV
    (BLOCK_N, BLOCK_K) and GEMM (BLOCK_K, BLOCK_N) paths share this code. Masked lanes decode to 0, so
    a NaN/inf table entry can never leak into padding. LUT_GATHER: look codes up in ``lut_vals`` (the
    2^BITS table, loaded once per program) with ``tl.gather`` instead of one global load per weight.
    """
    if BITS == 8:
        codes = tl.load(codes_ptr + n_idx * stride_cn + k_idx * stride_ck, mask=mask, other=0).to(tl.int32)
    elif BITS == 4:  # two codes per byte, the even column in the low nibble
        byte = tl.load(codes_ptr + n_idx * stride_cn + (k_idx // 2) * stride_ck, mask=mask, other=0)
        codes = (byte.to(tl.int32) >> ((k_idx % 2) * 4)) & 15
    else:  # a k-bit field of the row's little-endian bit stream spans at most two bytes
        bit = k_idx * BITS
        lo_ptr = codes_ptr + n_idx * stride_cn + (bit // 8) * stride_ck
        b0 = tl.load(lo_ptr, mask=mask, other=0).to(tl.int32)
        b1 = tl.load(lo_ptr + stride_ck, mask=mask & (bit // 8 + 1 < row_bytes), other=0).to(tl.int32)
        codes = ((b0 | (b1 << 8)) >> (bit % 8)) & ((1 << BITS) - 1)
    if LUT_GATHER:
        flat = tl.reshape(codes, (codes.shape[0] * codes.shape[1],))
        w = tl.reshape(tl.gather(lut_vals, flat, 0), codes.shape)
    else:
        w = tl.load(lut_ptr + codes)
    if SCALE_MODE == 2:  # SCALE_ELEMENT
        s = tl.load(scale_ptr + n_idx * stride_sn + (k_idx // block_size) * stride_sg, mask=mask, other=0.0)
        w = w * s
    return tl.where(mask, w, 0.0)


@triton.jit
def _group_scale(scale_ptr, offs_n, mask_n, group, stride_sn, stride_sg):
    """The (BLOCK_N,) scales of group ``group``; stride_sn is 0 for a one-row (per-tensor) scale."""
    return tl.load(scale_ptr + offs_n * stride_sn + group * stride_sg, mask=mask_n, other=0.0)


@triton.jit
def _lut_gemv_kernel(
    x_ptr, codes_ptr, scale_ptr, lut_ptr, bias_ptr, out_ptr,
    M, N, K, block_size, row_bytes,
    stride_xm, stride_xk, stride_cn, stride_ck, stride_sn, stride_sg, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr, BITS: tl.constexpr,
    LUT_SIZE: tl.constexpr, LUT_GATHER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    lut_vals = tl.load(lut_ptr + tl.arange(0, LUT_SIZE))  # 2^BITS entries; 1 KiB at most
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        w = dequantize(
            codes_ptr, lut_ptr, lut_vals, scale_ptr, offs_n[:, None], offs_k[None, :],
            mask_n[:, None] & mask_k[None, :], stride_cn, stride_ck,
            stride_sn, stride_sg, block_size, row_bytes, SCALE_MODE, BITS, LUT_GATHER,
        )  # (BLOCK_N, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        ).to(tl.float32)  # (BLOCK_M, BLOCK_K)
        part = tl.sum(x[:, None, :] * w[None, :, :], axis=2)  # (BLOCK_M, BLOCK_N)
        if SCALE_MODE == 1:  # SCALE_TILE: the whole K-tile lies in one scale block
            s = _group_scale(scale_ptr, offs_n, mask_n, k0 // block_size, stride_sn, stride_sg)  # (BLOCK_N,)
            part = part * s[None, :]
        acc += part
    if SCALE_MODE == 0:  # SCALE_ROW
        acc = acc * _group_scale(scale_ptr, offs_n, mask_n, 0, stride_sn, stride_sg)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _lut_gemm_kernel(
    x_ptr, codes_ptr, scale_ptr, lut_ptr, bias_ptr, out_ptr,
    M, N, K, block_size, row_bytes,
    stride_xm, stride_xk, stride_cn, stride_ck, stride_sn, stride_sg, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, SCALE_MODE: tl.constexpr, BITS: tl.constexpr,
    LUT_SIZE: tl.constexpr, LUT_GATHER: tl.constexpr,
    HALF_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped ordering: GROUP_M row-blocks share each weight column-block while it is hot in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    lut_vals = tl.load(lut_ptr + tl.arange(0, LUT_SIZE))  # 2^BITS entries; 1 KiB at most
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        )  # (BLOCK_M, BLOCK_K)
        w = dequantize(
            codes_ptr, lut_ptr, lut_vals, scale_ptr, offs_n[None, :], offs_k[:, None],
            mask_k[:, None] & mask_n[None, :], stride_cn, stride_ck,
            stride_sn, stride_sg, block_size, row_bytes, SCALE_MODE, BITS, LUT_GATHER,
        )  # (BLOCK_K, BLOCK_N)
        if HALF_DOT:  # tensor cores in x's own dtype: W rounded to it, as the torch path's matmul does
            w = w.to(x.dtype)
        else:
            x = x.to(tl.float32)
        if SCALE_MODE == 1:  # SCALE_TILE
            s = _group_scale(scale_ptr, offs_n, mask_n, k0 // block_size, stride_sn, stride_sg)  # (BLOCK_N,)
            acc += tl.dot(x, w, input_precision=DOT_PRECISION) * s[None, :]
        else:
            acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    if SCALE_MODE == 0:  # SCALE_ROW
        acc = acc * _group_scale(scale_ptr, offs_n, mask_n, 0, stride_sn, stride_sg)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one call; ``path`` is "gemv" or "gemm". Exposed so benchmarks can sweep them."""

    path: str
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8
    lut_gather: bool = True  # tl.gather from a per-program copy of the table, not a global load per weight
    half_dot: bool = True  # GEMM: bf16/fp16 x multiplies W rounded to x's dtype on tensor cores, not TF32


def interpreted() -> bool:
    """True when these kernels run on the Triton CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return type(_lut_gemv_kernel).__name__ == "InterpretedFunction"


def default_config(m: int, n: int, k: int, block: int, groups: int) -> KernelConfig:
    """Launch config from an H200 sweep (``benchmarks/bench_rf8_kernels.py --sweep``, docs/benchmarks.md).

    GEMV only for one row: long 512-code rows per program, 8 outputs, 2 warps. From two rows on, the
    tensor-core GEMM wins by far (M = 16: 62 us against 844 us for the best-swept GEMV at 4096->14336),
    with BLOCK_M = 16 up to 16 rows. In both, BLOCK_K is shrunk to the scale block size when that is a
    power of two, so each K-tile sits in one scale block (scale applied per tile, not per element).
    """
    if m <= GEMV_MAX_M:
        cfg = KernelConfig("gemv", 1, 8, 512, num_warps=2, num_stages=2)
    elif m <= 16:
        cfg = KernelConfig("gemm", 16, 64, 128, num_warps=4, num_stages=4)
    else:
        bm = 32 if m <= 32 else 64 if m <= 64 else 128
        cfg = KernelConfig("gemm", bm, 128 if bm == 128 else 64, 64, num_warps=4 if bm < 128 else 8)
    if groups > 1 and block % cfg.block_k != 0 and block >= 16 and block & (block - 1) == 0:
        cfg = dataclasses.replace(cfg, block_k=block)
    return cfg


def scale_mode(groups: int, block: int, block_k: int) -> int:
    """Where the scale is applied: once per row, once per K-tile, or per element (see module doc)."""
    if groups == 1:
        return SCALE_ROW
    return SCALE_TILE if block % block_k == 0 else SCALE_ELEMENT


def lut_linear_triton(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    lut: torch.Tensor,
    block_size: int | None,
    bias: torch.Tensor | None = None,
    config: KernelConfig | None = None,
    *,
    bits: int = 8,
) -> torch.Tensor:
    """Fused dequantize-matmul ``x @ W.T + bias`` for x of shape (..., K); output in x's dtype.

    ``bits`` < 8: ``codes`` are k-bit packed rows (docs/gf.md §3), unpacked in the kernel's tile load.
    """
    ops = check_operands(codes, scale, lut, block_size, bits=bits, in_features=x.shape[-1])
    n, k = ops.out_features, ops.in_features
    if x.shape[-1] != k:
        raise GGError(f"weight: input has {x.shape[-1]} features, codes expect {k}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise GGError(f"weight: input dtype {x.dtype} is not supported by the Triton path (fp32/bf16/fp16)")
    if not x.is_cuda and not interpreted():
        raise GGError("weight: the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    lut32 = lut.to(device=x.device, dtype=torch.float32).contiguous()
    scale32 = scale.to(device=x.device, dtype=torch.float32)
    codes = codes.to(x.device)
    out_dtype = torch.float32 if interpreted() else x.dtype
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)  # (M, N)
    if m > 0 and n > 0:
        cfg = config or default_config(m, n, k, ops.block, ops.groups)
        mode = scale_mode(ops.groups, ops.block, cfg.block_k)
        stride_sn = scale32.stride(0) if scale32.shape[0] > 1 else 0
        bias_arg = bias.to(x.device) if bias is not None else out
        common = (
            x2, codes, scale32, lut32, bias_arg, out, m, n, k, ops.block, codes.shape[1],
            x2.stride(0), x2.stride(1), codes.stride(0), codes.stride(1), stride_sn, scale32.stride(1),
            out.stride(0), out.stride(1),
        )
        if cfg.path == "gemv":
            if cfg.block_m < m:
                raise GGError(f"weight: GEMV config block_m={cfg.block_m} is smaller than the batch {m}")
            grid = (triton.cdiv(n, cfg.block_n),)
            _lut_gemv_kernel[grid](
                *common, HAS_BIAS=bias is not None, SCALE_MODE=mode, BITS=bits,
                LUT_SIZE=1 << bits, LUT_GATHER=cfg.lut_gather,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
        else:
            grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
            _lut_gemm_kernel[grid](
                *common, HAS_BIAS=bias is not None, SCALE_MODE=mode, BITS=bits,
                LUT_SIZE=1 << bits, LUT_GATHER=cfg.lut_gather,
                HALF_DOT=cfg.half_dot and x.dtype != torch.float32 and not interpreted(),
                DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
    return out.to(x.dtype).reshape(*lead, n)

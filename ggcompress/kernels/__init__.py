"""Matmul with 8-bit LUT-coded weights (RF8, FP8, INT8 share one decode rule), Triton or torch.

Importing this package never imports Triton: the Triton module loads on the first call that needs it,
so CPU-only installs (and ``import ggcompress``) don't pay for it or require it.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from ggcompress.errors import GGError
from ggcompress.kernels.reference import check_operands, dequantize, lut_linear_torch

__all__ = ["check_operands", "dequantize", "lut_linear", "lut_linear_torch", "triton_available"]

Backend = Literal["auto", "triton", "torch"]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it may still lack a GPU)."""
    return importlib.util.find_spec("triton") is not None


def lut_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    lut: torch.Tensor,
    block_size: int | None,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
    bits: int = 8,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W[n, k] = lut[codes[n, k]] * scale[n or 0, k // B]``; x is (..., K).

    ``block_size`` None means one scale group over all of K (per-tensor scale (1, 1) or per-channel
    (N, 1)); otherwise scale is (N or 1, ceil(K / block_size)). Output has x's dtype, accumulation is
    fp32. ``backend="auto"`` uses the fused Triton kernel for CUDA tensors when Triton is installed,
    the chunked torch path otherwise; "triton" on CPU tensors works only under TRITON_INTERPRET=1.
    ``bits`` < 8: ``codes`` hold k-bit packed rows (GF-k, docs/gf.md §3), unpacked inside the kernel.
    """
    if backend == "torch" or (backend == "auto" and not (x.is_cuda and triton_available())):
        return lut_linear_torch(x, codes, scale, lut, block_size, bias, bits=bits)
    if backend not in ("auto", "triton"):
        raise GGError(f"lut_linear: unknown backend {backend!r} (expected auto, triton or torch)")
    if not triton_available():
        raise GGError("lut_linear: backend 'triton' needs the triton package (install 'ggcompress[triton]')")
    from ggcompress.kernels.lut_matmul import lut_linear_triton

    return lut_linear_triton(x, codes, scale, lut, block_size, bias, bits=bits)

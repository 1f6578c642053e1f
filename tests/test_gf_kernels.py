"""k-bit packed codes (GF-k) through the Triton kernels (TRITON_INTERPRET=1) and torch path vs float64."""

from __future__ import annotations

import pytest
import torch
from kernel_device import to_device

from ggcompress.errors import GGError
from ggcompress.formats.packing import pack_codes
from ggcompress.kernels import lut_linear
from ggcompress.kernels.reference import dequantize


def make_packed(n: int, k: int, bits: int, block: int | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g).to(torch.uint8)
    lut = torch.full((256,), float("nan"))  # entries >= 2^k must never be read: NaN would show
    lut[: 1 << bits] = torch.sort(torch.randn(1 << bits, generator=g)).values
    groups = 1 if block is None else -(-k // block)
    scale = (torch.rand(n, groups, generator=g) + 0.5) * torch.where(torch.rand(n, groups, generator=g) < 0.5,
                                                                     -1.0, 1.0)
    return codes, pack_codes(codes, bits), scale, lut


def reference64(x, codes, scale, lut, block, bias=None):
    k = codes.shape[1]
    s = scale.double()
    s = s.expand(codes.shape[0], 1) if block is None else s.repeat_interleave(block, dim=1)[:, :k]
    w = lut.double()[codes.long()] * s
    y = x.double() @ w.t()
    return y if bias is None else y + bias.double()


# K not a multiple of 8 (a 3/5/6-bit field straddles the last byte), GEMV and GEMM paths, block and
# channel scales, a block that does not divide the K-tile (per-element scale).
CASES = [
    (1, 40, 45, 3, None), (3, 33, 64, 4, 32), (2, 24, 77, 5, 16), (17, 40, 50, 6, None),
    (20, 24, 96, 4, 24), (1, 16, 100, 8, 32), (18, 30, 61, 3, 32),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("m,n,k,bits,block", CASES)
def test_packed_lut_linear_matches_float64(backend, m, n, k, bits, block):
    codes, packed, scale, lut = make_packed(n, k, bits, block, seed=m + n + k)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(m, k, generator=g)
    bias = torch.randn(n, generator=g) if m % 2 else None
    operands = (x, packed if bits < 8 else codes, scale, lut)
    if backend == "triton":  # the interpreter on the CPU, compiled on a GPU (tests/kernel_device.py)
        y = lut_linear(*to_device(*operands), block, *to_device(bias), backend=backend, bits=bits).cpu()
    else:
        y = lut_linear(*operands, block, bias, backend=backend, bits=bits)
    ref = reference64(x, codes, scale, lut, block, bias)
    assert torch.isfinite(y).all()
    # fp32 accumulation of K products of O(1) terms: |error| <= K * 2^-23 * sum|x_i w_i| bound, use
    # a margin of 4x over K * eps * (|x| @ |w|) which a wrong code (an O(1) term) always exceeds.
    w_abs = (lut.double()[codes.long()].abs()) * 2.0
    bound = 4 * k * 2**-23 * (x.double().abs() @ w_abs.t()) + 1e-6
    assert ((y.double() - ref).abs() <= bound).all()


def test_packed_dequantize_matches_unpacked():
    codes, packed, scale, lut = make_packed(12, 37, 5, 8)
    a = dequantize(packed, scale, lut, 8, bits=5, in_features=37)
    b = dequantize(codes, scale, lut, 8)
    assert torch.equal(a, b)


def test_packed_shape_mismatch_is_one_clear_line():
    codes, packed, scale, lut = make_packed(4, 16, 3, None)
    with pytest.raises(GGError, match="packed bytes per row"):
        lut_linear(torch.randn(1, 17), packed, scale, lut, None, backend="torch", bits=3)


@pytest.mark.parametrize("path,bits", [("gemv", 4), ("gemm", 5), ("gemv", 8)])
def test_packed_global_table_loads_match_float64(path, bits):
    """The table read by one global load per weight (lut_gather=False) decodes the same k-bit codes."""
    from ggcompress.kernels.lut_matmul import KernelConfig, lut_linear_triton

    n, k, block = 24, 70, 16
    codes, packed, scale, lut = make_packed(n, k, bits, block, seed=bits)
    x = torch.randn(3 if path == "gemv" else 20, k, generator=torch.Generator().manual_seed(8))
    cfg = KernelConfig(path, 4 if path == "gemv" else 16, 16, 16, lut_gather=False)
    y = lut_linear_triton(*to_device(x, packed if bits < 8 else codes, scale, lut), block, config=cfg,
                          bits=bits).cpu()
    w_abs = lut.double()[codes.long()].abs() * 2.0
    bound = 4 * k * 2**-23 * (x.double().abs() @ w_abs.t()) + 1e-6
    assert ((y.double() - reference64(x, codes, scale, lut, block)).abs() <= bound).all()

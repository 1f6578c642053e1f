"""LUT-coded matmul (Triton under TRITON_INTERPRET=1, and the torch path) against a float64 reference.

Error bound used for every comparison, per output element (Higham, ch. 3):
    |y - ref| <= u_out_total * |ref| + 1.01 * (1 + u)^r * (c_w + (K + 3) * 2^-24) * sum_k |x_k| |W_nk|
- (K + 3) * 2^-24: fp32 accumulation of K products (gamma_K for any summation order, tree or
  sequential) plus one rounding each for lut*scale, x*w and the scale applied after the dot.
- c_w: rounding of W itself when a path computes in bf16 (torch path with a LUT that is not exact in
  bf16); 0 when the weight reaches the matmul exactly.
- u_out_total = (1 + u)^r - 1: r roundings of the output to x's dtype (u = 2^-8 bf16, 2^-11 fp16, 0
  fp32); r = 2 for the torch path's bf16 matmul, whose bf16 result is scaled in fp32 and rounded again.
  Output rounding alone can use almost all of this term (a value just above a power of two), so
  measured error/bound ratios near 1 are expected for half-precision outputs, not a sign of slack
  being used up by accumulation error.
x is rounded to its dtype before the reference sees it, so input rounding is common to both sides.
A wrong scale group, a dropped K tail or a bad mask gives errors of order |ref|, far above the bound.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_device import ON_GPU, TF32_UNIT, tf32_exact, to_device

from ggcompress.errors import GGError
from ggcompress.kernels import lut_linear, reference
from ggcompress.kernels.reference import check_operands, dequantize

RF8_MANTISSAS = (0.75, 0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25, 1.5)
UNIT = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def rf8_lut() -> torch.Tensor:
    """RF8 table built independently of ggcompress.formats: sign bit 7, E bits 6..3, m bits 2..0."""
    vals = []
    for code in range(256):
        s, e, m = code >> 7, (code >> 3) & 15, code & 7
        vals.append(0.0 if e == 0 and m == 0 else (-1.0) ** s * RF8_MANTISSAS[m] * 2.0 ** (e - 15))
    return torch.tensor(vals, dtype=torch.float32)


def make_case(n, k, block, scale_rows, lut_kind, seed=0):
    """Random codes, a positive scale of the right shape (block None: one group) and a LUT."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
    groups = 1 if block is None else -(-k // block)
    rows = n if scale_rows == "n" else 1
    scale = torch.rand(rows, groups, generator=g) * 1.5 + 0.25
    lut = rf8_lut() * 4.0 if lut_kind == "rf8" else torch.randn(256, generator=g)
    return codes, scale, lut


def reference64(x, codes, scale, lut, block, bias=None):
    """float64 y and sum |x||W|, decoding W by the rule directly (no ggcompress code)."""
    n, k = codes.shape
    b = k if block is None else block
    rows = torch.arange(n) if scale.shape[0] > 1 else torch.zeros(n, dtype=torch.long)
    w = lut.double()[codes.long()] * scale.double()[rows][:, torch.arange(k) // b]  # (N, K)
    x64 = x.double().reshape(-1, k)
    y = x64 @ w.T
    if bias is not None:
        y = y + bias.double()
    return y, x64.abs() @ w.abs().T


def assert_within_bound(y, x, codes, scale, lut, block, bias=None, *, c_w=0.0, out_roundings=1):
    ref, absdot = reference64(x, codes, scale, lut, block, bias)
    k = codes.shape[1]
    grow = (1.0 + UNIT[x.dtype]) ** out_roundings  # each output rounding scales what came before
    bound = (grow - 1.0) * ref.abs() + 1.01 * grow * (c_w + (k + 3) * 2.0**-24) * absdot + 1e-30
    err = (y.double().reshape(ref.shape) - ref).abs()
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error exceeds the bound by {worst:.3g}x"


def triton_on_device(x, codes, scale, lut, block, bias=None, **kwargs):
    """lut_linear(backend="triton") with the operands on the test device; the result back on the CPU."""
    y = lut_linear(*to_device(x, codes, scale, lut), block, *to_device(bias), backend="triton", **kwargs)
    return y.cpu()


def dot_rounding(x, lut, scale, block, n, k):
    """c_w for the GPU GEMM path with half-precision x, where W is rounded before tl.dot unless exact.

    The default config rounds W to x's dtype (bf16/fp16 tensor cores); half_dot=False rounds it to TF32.
    W enters the dot as raw table values, or as table x scale when the scale varies inside a K-tile.
    0 on the interpreter (fp32 dot), for fp32 x (IEEE dot) and on the GEMV path (fp32 FMAs).
    """
    from ggcompress.kernels.lut_matmul import default_config, scale_mode

    m = x.reshape(-1, k).shape[0]
    groups = 1 if block is None else -(-k // block)
    cfg = default_config(m, n, k, block or k, groups)
    if not ON_GPU or cfg.path != "gemm" or x.dtype == torch.float32:
        return 0.0
    per_element = scale_mode(groups, block or k, cfg.block_k) == reference.SCALE_ELEMENT
    w = lut[:, None] * scale.flatten()[None, :] if per_element else lut
    if cfg.half_dot:
        return 0.0 if torch.equal(w.to(x.dtype).float(), w.float()) else UNIT[x.dtype]
    return 0.0 if tf32_exact(w) else TF32_UNIT


# (M, N, K, block, scale rows, lut, x dtype): every granularity, GEMV (M <= 16) and GEMM (M > 16),
# K not a multiple of BLOCK_K or of the block size, N not a multiple of BLOCK_N, a non power-of-two
# block (per-element scale), a block spanning several K-tiles, and a one-row blocked scale.
TRITON_CASES = [
    (1, 100, 300, None, "1", "rf8", torch.float32),  # tensor scale, GEMV
    (3, 130, 257, None, "n", "random", torch.bfloat16),  # channel scale
    (16, 72, 200, 32, "n", "rf8", torch.float16),  # block 32: scale per K-tile
    (1, 40, 130, 24, "n", "random", torch.float32),  # block 24: scale per element
    (17, 70, 200, 64, "n", "random", torch.float32),  # GEMM, block 64, ragged K
    (64, 96, 160, None, "1", "rf8", torch.bfloat16),  # GEMM, tensor scale
    (33, 50, 100, 7, "1", "random", torch.bfloat16),  # GEMM, per-element scale, one-row blocked scale
]


@pytest.mark.parametrize("m,n,k,block,rows,lut_kind,dtype", TRITON_CASES)
def test_triton_matches_float64(m, n, k, block, rows, lut_kind, dtype):
    codes, scale, lut = make_case(n, k, block, rows, lut_kind)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if m % 2 else None  # a model cast to x's dtype
    y = triton_on_device(x, codes, scale, lut, block, bias)
    c_w = dot_rounding(x, lut, scale, block, n, k)
    assert_within_bound(y, x, codes, scale, lut, block, bias, c_w=c_w)


@pytest.mark.parametrize("lut_gather", [True, False])
@pytest.mark.parametrize("path,block,block_k", [("gemv", 256, 64), ("gemm", 256, 64), ("gemm", 48, 32)])
def test_triton_explicit_configs_cover_scale_modes(path, block, block_k, lut_gather):
    """Blocks spanning several K-tiles (scale per tile) or not dividing the tile (scale per element);
    the table read from a per-program copy (tl.gather) or by one global load per weight."""
    from ggcompress.kernels.lut_matmul import KernelConfig, lut_linear_triton, scale_mode

    n, k, m = 48, 300, 5 if path == "gemv" else 20
    codes, scale, lut = make_case(n, k, block, "n", "rf8", seed=2)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(3))
    cfg = KernelConfig(path, 8 if path == "gemv" else 16, 16, block_k, lut_gather=lut_gather)
    expected = reference.SCALE_TILE if block % block_k == 0 else reference.SCALE_ELEMENT
    assert scale_mode(-(-k // block), block, block_k) == expected
    y = lut_linear_triton(*to_device(x, codes, scale, lut), block, None, config=cfg).cpu()
    assert_within_bound(y, x, codes, scale, lut, block)


def test_triton_padding_never_reads_table_entry_zero():
    """Masked lanes load code 0; a NaN in lut[0] must not leak when no real weight uses code 0."""
    n, k = 20, 70  # ragged against every BLOCK_N / BLOCK_K
    codes, scale, lut = make_case(n, k, None, "n", "random", seed=4)
    codes = codes.clamp(min=1)
    lut[0] = float("nan")
    for m in (2, 18):
        x = torch.randn(m, k)
        y = triton_on_device(x, codes, scale, lut, None)
        lut_ok = lut.clone()
        lut_ok[0] = 0.0
        assert_within_bound(y, x, codes, scale, lut_ok, None)


def test_triton_leading_dims_and_strided_input():
    codes, scale, lut = make_case(24, 64, 16, "n", "rf8", seed=5)
    base = torch.randn(2, 3, 128)
    x = base[..., ::2]  # (2, 3, 64), stride 2 along K
    (base,) = to_device(base)
    y = lut_linear(base[..., ::2], *to_device(codes, scale, lut), 16, backend="triton").cpu()
    assert y.shape == (2, 3, 24)
    assert_within_bound(y, x, codes, scale, lut, 16)


@pytest.mark.parametrize("m", [1, 3, 16, 17, 64])
@pytest.mark.parametrize(
    "block,rows,lut_kind,dtype",
    [
        (None, "1", "rf8", torch.float32),
        (None, "n", "random", torch.bfloat16),
        (32, "n", "rf8", torch.bfloat16),
        (24, "n", "random", torch.float32),
        (64, "1", "random", torch.float16),
    ],
)
def test_torch_path_matches_float64(m, block, rows, lut_kind, dtype):
    n, k = 90, 250
    codes, scale, lut = make_case(n, k, block, rows, lut_kind, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(6)).to(dtype)
    bias = torch.randn(n) if m % 2 else None
    y = lut_linear(x, codes, scale, lut, block, bias, backend="torch")
    # The torch path multiplies in x's dtype (fp16 runs in fp32 on the CPU): a bf16 matmul sees W
    # rounded to bf16 unless the table is exact there and the scale is applied afterwards (one group).
    bf16 = dtype == torch.bfloat16
    exact = block is None and torch.equal(lut.to(torch.bfloat16).float(), lut)
    c_w = 2.0**-8 if bf16 and not exact else 0.0
    assert_within_bound(y, x, codes, scale, lut, block, bias, c_w=c_w, out_roundings=2 if bf16 else 1)


@pytest.mark.parametrize("block", [None, 10])
def test_torch_path_row_chunks(monkeypatch, block):
    """A weight bigger than one chunk is decoded in row chunks with the same result."""
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 7 * 50)  # 7 rows of K=50 per chunk: 5 chunks
    codes, scale, lut = make_case(33, 50, block, "n", "random", seed=7)
    x = torch.randn(4, 50)
    y = lut_linear(x, codes, scale, lut, block, backend="torch")
    assert_within_bound(y, x, codes, scale, lut, block)
    w = dequantize(codes, scale, lut, block, torch.float64)
    ref, _ = reference64(torch.eye(50), codes, scale, lut, block)
    assert torch.equal(w, ref.T.contiguous())


def test_auto_backend_uses_torch_for_cpu_tensors(monkeypatch):
    import ggcompress.kernels.lut_matmul as lm

    def fail(*args, **kwargs):
        raise AssertionError("Triton path taken for CPU tensors")

    monkeypatch.setattr(lm, "lut_linear_triton", fail)
    codes, scale, lut = make_case(8, 16, None, "n", "random")
    x = torch.randn(2, 16)
    y = lut_linear(x, codes, scale, lut, None)
    assert_within_bound(y, x, codes, scale, lut, None)


def test_bad_operands_raise_one_clear_line():
    codes, scale, lut = make_case(8, 16, 4, "n", "random")
    with pytest.raises(GGError, match=r"scale must be float of shape \(1 or 8, 4\)"):
        check_operands(codes, scale[:, :3], lut, 4, name="layers.0.q_proj")
    with pytest.raises(GGError, match="codes must be a 2-D uint8"):
        check_operands(codes.to(torch.int8), scale, lut, 4)
    with pytest.raises(GGError, match="lut must be 256 floats"):
        check_operands(codes, scale, lut[:255], 4)
    with pytest.raises(GGError, match="input has 15 features"):
        lut_linear(torch.randn(2, 15), codes, scale, lut, 4)
    with pytest.raises(GGError, match="unknown backend"):
        lut_linear(torch.randn(2, 16), codes, scale, lut, 4, backend="cuda")


def test_importing_the_package_does_not_import_triton():
    code = (
        "import sys, ggcompress, ggcompress.kernels, ggcompress.kernels.nn; "
        "assert 'triton' not in sys.modules, 'triton imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""RDOQ: one pass against a brute-force numpy reference, its moves, the low-rate gain, pack --rdoq."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ggcompress.codec import pack as P
from ggcompress.codec.rdoq import LAMBDA, rdoq_symbols


def laplace(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).laplace(0, 0.02, n)).to(torch.float32)


def test_one_pass_matches_brute_force() -> None:
    x = laplace(5_000, 0)
    step = 2.0**-5
    w = x.numpy().astype(np.float64) / step
    base = np.round(w)  # numpy rounds half to even, like the quantizer
    values, counts = np.unique(base, return_counts=True)
    bits = dict(zip(values.tolist(), (-np.log2(counts / w.size)).tolist(), strict=True))
    want = base.copy()
    for i in range(w.size):  # every candidate's cost J = error + λ·bits, written out per element
        if base[i] == 0:
            continue
        down = base[i] - np.sign(base[i])
        j_keep = (w[i] - base[i]) ** 2 + LAMBDA * bits[base[i]]
        j_down = (w[i] - down) ** 2 + LAMBDA * bits.get(down, 64.0)
        if j_down < j_keep:
            want[i] = down
    got = rdoq_symbols(x, step, passes=1).numpy()
    assert np.array_equal(got, want.astype(np.int64))


def test_moves_and_low_rate_gain() -> None:
    x = laplace(200_000, 1)
    step = 2.0**-3
    plain = torch.round(x.double() / step).long()
    q = rdoq_symbols(x, step)
    diff = plain - q
    assert set(torch.unique(diff * torch.sign(plain)).tolist()) <= {0, 1}  # at most one step toward zero
    assert int((diff != 0).sum()) > 0

    def entropy(s: torch.Tensor) -> float:
        _, c = torch.unique(s, return_counts=True)
        p = c.double() / s.numel()
        return float(-(p * torch.log2(p)).sum())

    def sqnr(s: torch.Tensor, at: float = step) -> float:
        xf = x.double()
        return 10 * np.log10(float((xf**2).sum() / ((xf - s.double() * at) ** 2).sum()))

    # Against the uniform quantizer's own trade-off (~6 dB per bit at these rates, measured between
    # steps 2^-3 and 2^-4 here), RDOQ's bits saved must be worth more than its dB lost.
    finer = torch.round(x.double() / (step / 2)).long()
    slope = (sqnr(finer, step / 2) - sqnr(plain)) / (entropy(finer) - entropy(plain))
    saved = entropy(plain) - entropy(q)
    lost = sqnr(plain) - sqnr(q)
    assert saved > 0 and lost < slope * saved


def test_pack_rdoq_restores_its_symbols(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.mkdir()
    x = laplace(64 * 512, 2).reshape(64, 512)
    save_file({"w.weight": x}, str(path / "model.safetensors"))
    doc = P.pack(path, tmp_path / "r.ggz", P.PackOptions(quant="step:4", coder="rans", rdoq=True))
    y = dict(P.read_packed(tmp_path / "r.ggz"))["w.weight"]
    assert torch.equal(y, (rdoq_symbols(x, 2.0**-4).double() * 2.0**-4).float().reshape(x.shape))
    plain = P.pack(path, tmp_path / "p.ggz", P.PackOptions(quant="step:4", coder="rans"))
    assert (doc["checkpoints"][0]["summary"]["coded_bits_per_param"]
            < plain["checkpoints"][0]["summary"]["coded_bits_per_param"])


def test_counted_matches_per_weight_symbols_for_every_dtype() -> None:
    """rdoq_counted (per distinct bit pattern for bf16/fp16, per weight otherwise) gives rdoq_symbols'
    symbols and their exact counts."""
    from ggcompress.codec.rdoq import rdoq_counted

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = laplace(60_000, 3).to(dtype)
        for step in (2.0**-3, 2.0**-7, 0.003):
            want = rdoq_symbols(x, step)
            q, counts, lo = rdoq_counted(x, step)
            assert torch.equal(q.to(torch.int64), want), (dtype, step)
            assert torch.equal(counts, torch.bincount(want - lo, minlength=counts.numel()))

"""QuantLinear and replace_linears: same outputs as nn.Linear holding the dequantized weight.

Both sides are fp32 with the same weights and differ only in summation order (and where the scale is
multiplied), so per layer |diff| <= 2 * (K + 3) * 2^-24 * sum|x||W| (each side within gamma_K of the
exact product, plus the lut*scale / scale-after roundings). For a whole model the per-layer bound is
not propagated exactly; the model test allows 1e-5 of the logit range (~80 fp32 ulps; observed
1.5e-7), while a wrong scale group or code in any one layer moves logits by orders of magnitude more.
"""

from __future__ import annotations

import pytest
import torch
from kernel_device import DEVICE
from torch import nn

from ggcompress.errors import GGError
from ggcompress.kernels.nn import QuantLinear, replace_linears


def int8_quantize(w: torch.Tensor, block: int | None):
    """Symmetric absmax INT8 as a LUT (code = two's-complement byte), per row or per block of K."""
    n, k = w.shape
    b = k if block is None else block
    groups = -(-k // b)
    padded = torch.nn.functional.pad(w, (0, groups * b - k)).view(n, groups, b)
    scale = (padded.abs().amax(dim=2) / 127).clamp(min=1e-12)  # (N, G)
    q = torch.round(padded / scale[:, :, None]).clamp(-127, 127).view(n, -1)[:, :k]
    codes = q.to(torch.int8).view(torch.uint8)
    lut = torch.arange(256, dtype=torch.float32)
    lut[128:] -= 256
    return codes.contiguous(), scale, lut


def int8_dequantize(codes: torch.Tensor, scale: torch.Tensor, block: int | None) -> torch.Tensor:
    """The dense weight straight from the INT8 definition (independent of ggcompress' decode code)."""
    k = codes.shape[1]
    b = k if block is None else block
    return codes.view(torch.int8).float() * scale[:, torch.arange(k) // b]


def test_forward_equals_linear_with_dequantized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    codes, scale, lut = int8_quantize(lin.weight.detach(), 32)
    q = QuantLinear.from_quantized(codes, scale, lut, 32, lin.bias.detach(), fmt="int8")
    w = q.dequantize_weight()
    assert torch.equal(w, int8_dequantize(codes, scale, 32))
    x = torch.randn(3, 5, 96)
    y = q(x)
    ref = nn.functional.linear(x, w, lin.bias)
    bound = 2 * (96 + 3) * 2.0**-24 * (x.abs() @ w.abs().T) + 1e-30
    assert y.shape == (3, 5, 40)
    assert ((y - ref).abs() <= bound).all()
    # and the INT8 weight is close to the original one (half a step per element at most)
    step = scale.repeat_interleave(32, dim=1)[:, :96]
    assert ((w - lin.weight).abs() <= step / 2 * (1 + 2.0**-20)).all()


def test_module_keeps_codes_and_fp32_tables_under_dtype_casts():
    torch.manual_seed(1)
    codes, scale, lut = int8_quantize(torch.randn(16, 64), None)
    q = QuantLinear.from_quantized(codes, scale, lut, None, torch.randn(16), fmt="int8")
    q = q.to(torch.bfloat16)
    assert q.codes.dtype == torch.uint8
    assert q.scale.dtype == torch.float32 and q.lut.dtype == torch.float32
    assert torch.equal(q.scale, scale)
    assert q.bias.dtype == torch.bfloat16
    x = torch.randn(2, 64).to(torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.bfloat16
    ref = x.double() @ q.dequantize_weight(torch.float64).T + q.bias.double()
    # INT8 LUT values are exact in bf16 and the scale is applied in fp32 afterwards: only the
    # two output roundings to bf16 (2^-8 each) and fp32 accumulation remain.
    absdot = x.double().abs() @ q.dequantize_weight(torch.float64).abs().T
    bound = ((1 + 2.0**-8) ** 2 - 1) * ref.abs() + 1.1 * (64 + 3) * 2.0**-24 * absdot
    assert ((y.double() - ref).abs() <= bound).all()
    assert "format=int8" in repr(q) and "granularity=channel" in repr(q)


def test_state_dict_round_trip_into_an_empty_layer():
    codes, scale, lut = int8_quantize(torch.randn(12, 40), 16)
    q = QuantLinear.from_quantized(codes, scale, lut, 16, None, fmt="int8")
    sd = q.state_dict()
    assert set(sd) == {"codes", "scale", "lut"}
    fresh = QuantLinear(40, 12, block_size=16, bias=False, fmt="int8")
    fresh.load_state_dict(sd)
    x = torch.randn(4, 40)
    assert torch.equal(fresh(x), q(x))
    assert "granularity=block:16" in repr(fresh)


def test_from_quantized_rejects_mismatched_bias():
    codes, scale, lut = int8_quantize(torch.randn(8, 16), None)
    with pytest.raises(GGError, match="model.fc: bias has shape"):
        QuantLinear.from_quantized(codes, scale, lut, None, torch.zeros(9), name="model.fc")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_replace_linears_in_a_transformers_model(backend):
    model = _tiny_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert len(names) == 14  # 7 linears per decoder layer
    quantized, dense = {}, {}
    for i, name in enumerate(names):
        block = (None, 32, 16)[i % 3]
        codes, scale, lut = int8_quantize(model.get_submodule(name).weight.detach(), block)
        quantized[name] = (codes, scale, lut, block, "int8")
    swapped = replace_linears(model, quantized)
    assert swapped == names
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantLinear)
        layer.backend = backend
        codes, scale, _, block, _ = quantized[name]
        dense[name] = int8_dequantize(codes, scale, block)
        assert torch.equal(layer.dequantize_weight(), dense[name])
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if backend == "triton":  # the interpreter on the CPU, compiled on a GPU (tests/kernel_device.py)
            logits_q = model.to(DEVICE)(ids.to(DEVICE)).logits.cpu()
            model.cpu()
        else:
            logits_q = model(ids).logits
    reference = _tiny_llama()
    with torch.no_grad():
        for name, w in dense.items():
            reference.get_submodule(name).weight.copy_(w)
        logits_ref = reference(ids).logits
    span = (logits_ref.max() - logits_ref.min()).item()
    assert (logits_q - logits_ref).abs().max().item() <= 1e-5 * span
    # the quantized model holds 1-byte codes where the fp32 model held 4-byte weights
    code_bytes = sum(model.get_submodule(n).codes.numel() for n in names)
    assert code_bytes == sum(reference.get_submodule(n).weight.numel() for n in names)


def test_replace_linears_checks_everything_before_swapping():
    model = _tiny_llama()
    good = "model.layers.0.self_attn.q_proj"
    codes, scale, lut = int8_quantize(model.get_submodule(good).weight.detach(), None)
    bad_shape = int8_quantize(torch.randn(3, 64), None)
    cases = {
        "model.layers.9.mlp.up_proj": (codes, scale, lut, None, "int8"),
        "model.norm": (codes, scale, lut, None, "int8"),
        "model.layers.0.mlp.up_proj": (*bad_shape, None, "int8"),
    }
    messages = ["no such submodule", "expected an nn.Linear", "codes have shape"]
    for (name, entry), message in zip(cases.items(), messages, strict=True):
        with pytest.raises(GGError, match=message):
            replace_linears(model, {good: (codes, scale, lut, None, "int8"), name: entry})
        assert isinstance(model.get_submodule(good), nn.Linear)  # untouched: nothing swapped

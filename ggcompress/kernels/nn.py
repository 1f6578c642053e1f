"""``QuantLinear``: an nn.Linear replacement whose weight lives as 1-byte LUT codes, and model surgery.

The module stores exactly what a checkpoint stores (uint8 ``codes``, float32 ``scale``, the 256-entry
float32 ``lut``, optional ``bias``) and decodes on the fly in every forward (fused Triton kernel on a
GPU, chunked torch path on the CPU); it caches no dense weight, since 1-byte weights in memory are the
point. It knows nothing about how codes were produced, so RF8, FP8 and INT8 checkpoints all load here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ggcompress.errors import GGError
from ggcompress.io.layers import is_conv1d
from ggcompress.kernels import Backend, check_operands, dequantize, lut_linear

# scale and lut stay float32 whatever dtype the model is cast to: a bf16 scale would add a 2^-9
# relative error to every weight, and fp16 can underflow small block scales.
_FP32_BUFFERS = ("scale", "lut")


class QuantLinear(nn.Module):
    """Linear layer ``y = x @ (lut[codes] * scale).T + bias`` over 8-bit LUT codes (N_out, K)."""

    codes: torch.Tensor
    scale: torch.Tensor
    lut: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_size: int | None = None,
        bias: bool = True,
        fmt: str = "lut8",
        scale_rows: int | None = None,
        device: torch.device | str | None = None,
        backend: Backend = "auto",
        bits: int = 8,
    ) -> None:
        """Empty layer (zero codes); ``scale_rows`` is 1 for a per-tensor scale, else ``out_features``.

        ``bits`` < 8 (GF-k): ``codes`` holds k-bit packed rows, (out, ceil(in * k / 8)) bytes, unpacked
        only inside the matmul, so a 4-bit layer keeps half a byte per weight in memory.
        """
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.format = fmt
        self.backend: Backend = backend
        self.bits = bits
        groups = 1 if block_size is None else -(-in_features // block_size)
        rows = out_features if scale_rows is None else scale_rows
        codes = torch.zeros(out_features, -(-in_features * bits // 8), dtype=torch.uint8, device=device)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", torch.ones(rows, groups, dtype=torch.float32, device=device))
        self.register_buffer("lut", torch.zeros(256, dtype=torch.float32, device=device))
        bias_buf = torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None
        self.register_buffer("bias", bias_buf)

    @classmethod
    def from_quantized(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        lut: torch.Tensor,
        block_size: int | None,
        bias: torch.Tensor | None = None,
        fmt: str = "lut8",
        name: str = "weight",
        *,
        bits: int = 8,
        in_features: int | None = None,
    ) -> QuantLinear:
        """Wrap existing codes/scale/lut (checked against the decode rule; ``name`` labels errors).

        ``bits`` < 8: ``codes`` are k-bit packed rows of ``in_features`` codes (docs/gf.md §3)."""
        ops = check_operands(codes, scale, lut, block_size, name=name, bits=bits, in_features=in_features)
        if bias is not None and tuple(bias.shape) != (ops.out_features,):
            raise GGError(f"{name}: bias has shape {tuple(bias.shape)}, expected ({ops.out_features},)")
        layer = cls(
            ops.in_features, ops.out_features, block_size, bias=bias is not None, fmt=fmt,
            scale_rows=scale.shape[0], device="meta",  # shape-only buffers on meta, replaced just below
            bits=bits,
        )
        layer.codes = codes.contiguous()
        layer.scale = scale.to(device=codes.device, dtype=torch.float32).contiguous()
        layer.lut = lut.to(device=codes.device, dtype=torch.float32).contiguous()
        if bias is not None:
            layer.bias = bias.detach().to(codes.device).clone()
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lut_linear(
            x, self.codes, self.scale, self.lut, self.block_size, self.bias, backend=self.backend,
            bits=self.bits,
        )

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (out, in) weight this layer computes with, for debugging and comparisons."""
        return dequantize(self.codes, self.scale, self.lut, self.block_size, dtype, bits=self.bits,
                          in_features=self.in_features)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:
        # Let device moves through but keep scale/lut in float32 under model.to(dtype)/.half()/.bfloat16().
        kept = {name: self._buffers[name] for name in _FP32_BUFFERS}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != torch.float32:
                self._buffers[name] = original.to(device=moved.device)
        return self

    def extra_repr(self) -> str:
        granularity = (
            f"block:{self.block_size}" if self.block_size is not None
            else "tensor" if self.scale.shape[0] == 1 else "channel"
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
            f"granularity={granularity}, bias={self.bias is not None}"
        )


QuantizedWeight = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "int | None", str]


def replace_linears(model: nn.Module, quantized: Mapping[str, QuantizedWeight]) -> list[str]:
    """Swap linear submodules, by qualified name, for QuantLinear layers; return the names swapped.

    ``quantized[name] = (codes, scale, lut, block_size, fmt)`` with codes [out, in]. A transformers
    ``Conv1D`` (weight [in, out]) is swapped too: its codes are the transpose of its weight. The layer's
    bias is kept (same dtype and device) and the codes move to its device. Every name is checked
    before any swap, so a bad entry leaves the model untouched.
    """
    plan: list[tuple[nn.Module, str, QuantLinear]] = []
    for name, (codes, scale, lut, block_size, fmt) in quantized.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise GGError(f"{name}: no such submodule in the model") from exc
        if isinstance(old, nn.Linear):
            expected = (old.out_features, old.in_features)
        elif is_conv1d(old):
            expected = (old.nf, old.nx)
        else:
            raise GGError(f"{name}: expected an nn.Linear or Conv1D to replace, found {type(old).__name__}")
        if tuple(codes.shape) != expected:
            raise GGError(
                f"{name}: codes have shape {tuple(codes.shape)}, the layer is {expected} ([out, in])"
            )
        device = old.weight.device
        bias = old.bias.detach() if old.bias is not None else None
        new = QuantLinear.from_quantized(
            codes.to(device), scale.to(device), lut.to(device), block_size, bias, fmt, name=name
        )
        parent_name, _, child = name.rpartition(".")
        plan.append((model.get_submodule(parent_name) if parent_name else model, child, new))
    for parent, child, new in plan:
        setattr(parent, child, new)
    return list(quantized)

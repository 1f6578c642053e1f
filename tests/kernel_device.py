"""Where the Triton kernel tests run: the CPU interpreter (the default, and CI) or a CUDA GPU.

With ``GGCOMPRESS_TEST_DEVICE=cuda`` in the environment before pytest starts, conftest leaves
TRITON_INTERPRET unset, so the same tests compile the kernels for the GPU; they move their operands
there with ``to_device`` and compare on the CPU. Only the kernel tests (test_kernels, test_gf_kernels,
test_nn) are meant to be run that way.
"""

from __future__ import annotations

import os

import torch

DEVICE = torch.device(os.environ.get("GGCOMPRESS_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
# tl.dot with input_precision="tf32" (the GEMM path for bf16/fp16 x) rounds its fp32 operands to
# 10 explicit mantissa bits: relative error at most 2^-11 per weight, nothing on the interpreter.
TF32_UNIT = 2.0**-11


def to_device(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors on the test device (None stays None)."""
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


def tf32_exact(t: torch.Tensor) -> bool:
    """True when every value of ``t`` (as fp32) has at most 11 significant bits, so TF32 keeps it."""
    bits = t.detach().float().contiguous().view(torch.int32)
    return bool(((bits & 0x1FFF) == 0).all())

"""Which modules of a model are linear layers, and how their weight is laid out.

Why one place: BackSlash/DeepShape select linear weights, GG init needs their fan-in, and quantization
stores codes in the matmul's [out, in] orientation. PyTorch's ``nn.Linear`` stores its weight
[out, in]; transformers' ``Conv1D`` (GPT-2, GPT-1, ImageGPT, CLVP, DecisionTransformer...) is the same
linear map with the weight stored transposed, [in, out] (``y = x @ W + b``). Every module that asks
"is this a linear layer?" asks here, so a family that stores weights transposed is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: a linear layer whose weight is [in, out] (attributes nf = out, nx = in)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency of every model command
        Conv1D = None  # noqa: N806
    if Conv1D is not None and isinstance(module, Conv1D):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D`` with a 2-D weight."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Linear) or is_conv1d(module)) and weight is not None and weight.ndim == 2


def linear_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every linear layer of ``model``, in ``named_modules`` order."""
    for name, module in model.named_modules():
        if is_linear(module):
            yield name, module


def fan_in(module: nn.Module) -> int:
    """Number of inputs of a linear layer: weight.shape[1] for nn.Linear [out, in], shape[0] for Conv1D."""
    w = module.weight
    return int(w.shape[0] if is_conv1d(module) else w.shape[1])

"""Register the transformers quantizer when transformers' quantizer registry is imported.

Why a hook: transformers has no plugin entry point for quantizers, and ``import ggcompress`` must stay
light (no torch, no transformers). ``arm()`` (called by ``import ggcompress``) registers at once if the
registry is already imported, else adds a one-shot ``sys.meta_path`` finder that registers right after
``transformers.quantizers.auto`` executes, so ``AutoModelForCausalLM.from_pretrained`` on a quantized
folder works in any program that imported ggcompress first, whatever the import order of the rest.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

TARGET = "transformers.quantizers.auto"


_MODULE = "ggcompress.integrations.transformers_quantizer"


def _register() -> None:
    partial = sys.modules.get(_MODULE)
    if partial is not None and not hasattr(partial, "register"):
        return  # that module is importing transformers right now; it registers itself when done
    try:
        import torch

        # transformers may import its registry inside a ``with torch.device("meta")`` block (a model
        # built on meta); ggcompress's decode tables must still be real CPU tensors.
        with torch.device("cpu"):
            from ggcompress.integrations.transformers_quantizer import register
            register()
    except Exception as exc:  # never break transformers itself because of this plugin
        warnings.warn(f"ggcompress: could not register its transformers quantizer ({exc}); "
                      "ggcompress-quantized folders will not load through from_pretrained",
                      RuntimeWarning, stacklevel=2)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's signature
        if name != TARGET:
            return None
        disarm()  # one shot, and no recursion through the find_spec below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_FINDER = _Finder()


def arm() -> None:
    """Register now if transformers' registry is loaded, else when it is (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def disarm() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)

"""The longest input a model accepts, and clamping a requested window to it.

Why: every command that runs a model on text picks a length (training blocks, eval's KL windows,
lm-eval's max_length). A model with learned positions (GPT-2's 1024 or 128 ``n_positions``, OPT,
BERT's 512) indexes past its position table when given more tokens and dies with ``IndexError: index
out of range in self``; a rotary model runs but beyond the context it was built for. So each length is
clamped to the model's context here, once, and the caller reports the clamp (stderr and report).

The context is the first of ``n_positions``, ``max_position_embeddings``, ``n_ctx``,
``max_sequence_length``, ``seq_length`` that the config (or its text config, for multimodal models)
sets. A sliding window (Mistral, Gemma 2, Qwen2's ``use_sliding_window``) limits how far attention
looks back, not the input length, so it does not clamp; it is reported next to the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Config attributes that bound the input length, in the order they are trusted.
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class Context:
    """A model's usable input length (``tokens`` None: its config sets no limit) and where it came from."""

    tokens: int | None
    source: str | None = None  # the config key, e.g. "n_positions"
    sliding_window: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "source": self.source, "sliding_window": self.sliding_window}


def model_context(model_or_config: Any) -> Context:
    """The context of a transformers model or config (see the module doc for the keys read)."""
    config = getattr(model_or_config, "config", model_or_config)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            config = get_text()
        except (TypeError, ValueError, AttributeError):
            pass
    sliding = _positive_int(getattr(config, "sliding_window", None))
    if sliding is not None and getattr(config, "use_sliding_window", True) is False:
        sliding = None
    for key in POSITION_KEYS:
        value = _positive_int(getattr(config, key, None))
        if value is not None:
            return Context(value, key, sliding)
    return Context(None, None, sliding)


def clamp(requested: int, context: Context, what: str) -> tuple[int, str | None]:
    """(length to use, note or None): ``requested`` cut to the context, with a line saying so."""
    if context.tokens is None or requested <= context.tokens:
        return requested, None
    return context.tokens, (f"{what} {requested} is longer than the model's context "
                            f"({context.tokens} tokens, config {context.source}); using {context.tokens}")


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value

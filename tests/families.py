"""Tiny random models of the common transformers families, built offline from configs.

Why: ggcompress must work on (or refuse clearly) every architecture a user brings, not only Llama.
Each family keeps what makes it different from Llama: GPT-2's Conv1D weights stored [in, out] with a
fused c_attn and 128 learned positions, GPT-NeoX's fused query_key_value and untied embed_out, OPT's
learned positions with an offset, Mistral's sliding window, Qwen3's q/k norms, Gemma 2's soft-capping
and alternating sliding layers, Phi-3's fused qkv_proj and gate_up_proj, and BERT (an encoder).
All are hidden 32, 2 layers, the 384-token BPE of tests/tinylm.py, and a context of 128 positions
(64 for BERT), shorter than every default window of the commands, so context clamping is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tinylm import VOCAB, build_tokenizer

#: Positions of every causal family (BERT: 64): below backslash's 256 and eval's 512 defaults.
CONTEXT = 128


@dataclass(frozen=True)
class Family:
    """A transformers config class + the model class to build, and whether it is a causal LM."""

    config: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    causal: bool = True


_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
_LLAMA_LIKE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": CONTEXT, **_IDS}

FAMILIES: dict[str, Family] = {
    "gpt2": Family("GPT2Config", "GPT2LMHeadModel", {
        "vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 32, "n_layer": 2, "n_head": 4,
        "bos_token_id": 0, "eos_token_id": 0}),
    "gpt_neox": Family("GPTNeoXConfig", "GPTNeoXForCausalLM", {
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": CONTEXT, "tie_word_embeddings": False, **_IDS}),
    "opt": Family("OPTConfig", "OPTForCausalLM", {
        "vocab_size": VOCAB, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "word_embed_proj_dim": 32, "max_position_embeddings": CONTEXT, **_IDS}),
    "llama": Family("LlamaConfig", "LlamaForCausalLM", {**_LLAMA_LIKE, "tie_word_embeddings": True}),
    "mistral": Family("MistralConfig", "MistralForCausalLM", {**_LLAMA_LIKE, "sliding_window": 16}),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", {**_LLAMA_LIKE, "head_dim": 8,
                                                       "tie_word_embeddings": True}),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM", {**_LLAMA_LIKE, "head_dim": 8, "sliding_window": 16,
                                                         "query_pre_attn_scalar": 8}),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", {**_LLAMA_LIKE,
                                                   "original_max_position_embeddings": CONTEXT}),
    "bert": Family("BertConfig", "BertForMaskedLM", {
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0}, causal=False),
}
CAUSAL = tuple(name for name, f in FAMILIES.items() if f.causal)


def build_family(name: str, folder: Path, tokenizer: Any, *, seed: int = 0) -> Path:
    """Save a random tiny model of family `name` (fp32 safetensors) + `tokenizer` into `folder`."""
    import transformers

    fam = FAMILIES[name]
    config = getattr(transformers, fam.config)(**fam.kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model)(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_all(root: Path, text: str) -> dict[str, Path]:
    """Every family under root/<name>, sharing one tokenizer trained on `text`."""
    tokenizer = build_tokenizer(text)
    return {name: build_family(name, root / name, tokenizer) for name in FAMILIES}

"""A tiny random Llama with a byte-level BPE trained in-process on the real Wikipedia fixture text.

Shared by the training-engine and BackSlash tests: a real tokenizer and real text, a model small enough
that a training step takes milliseconds on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 384
END = "<|endoftext|>"


def build_tokenizer(text: str):
    """Byte-level BPE trained on `text` (deterministic), wrapped as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[END], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END, eos_token=END, unk_token=END)


def build_model_folder(folder: Path, text: str, *, seed: int = 0, tie: bool = True,
                       init_std: float = 0.02) -> Path:
    """Save a random tiny LlamaForCausalLM (hidden 32, 2 layers) + tokenizer as an HF folder; a larger
    ``init_std`` gives peaked next-token distributions (weights that matter to the output)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(text)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=tie,
                         initializer_range=init_std)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def calibrated_model(root: Path, train_file: str | Path, **kwargs) -> tuple[Path, Path, str]:
    """(model folder, calibration file, its text): a tiny model (build_model_folder, ``kwargs``) whose
    tokenizer is trained on the first 40,000 characters of the training text, that text saved beside it."""
    text = Path(train_file).read_text(encoding="utf-8")[:40_000]
    (root / "calib.txt").write_text(text, encoding="utf-8")
    return build_model_folder(root / "model", text, **kwargs), root / "calib.txt", text

"""The naturally trained causal-LM fixture: a small Llama trained from a seed on the Wikipedia text.

Why: the only other causal LM here (SmolLM2) is dequantized from Q4_1, so its weights sit on a 4-bit
lattice and say nothing about the shape of naturally trained weights. This one is trained here, from
scratch, in fp32, so BackSlash / DeepShape / GG-init claims can be tested on weights as training left
them.

Recipe (`WikiLMRecipe`): a byte-level BPE tokenizer trained with ``tokenizers`` on the fixture's
train.txt, a Llama (RMSNorm, SwiGLU, RoPE, tied embedding / head) initialized by transformers under
``torch.manual_seed(seed)``, trained with the shared engine (ggcompress.methods.train: AdamW, warmup +
cosine, seeded block order) on a fixed number of threads, so the same recipe on the same software
gives the same bytes. The manifest records the recipe, the training curve (mean loss every
`log_every` steps, validation loss every `eval_every`), the final validation loss / perplexity on all
validation blocks and a unigram model's validation loss (add-one counts of the train tokens, on the
same predicted positions) as the floor the LM must beat.

The default recipe is sized to build in under 45 minutes on 2 idle cores; tests pass a tiny recipe
(which gets its own cache name, so it is never mistaken for the real one).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggcompress.errors import GGError

#: Bump when the build code changes what a recipe produces.
REVISION = "r1"
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class WikiLMRecipe:
    """Everything that decides the fixture's bytes (with the software versions)."""

    vocab: int = 8192
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 768
    block_size: int = 128
    batch_size: int = 16
    steps: int = 1200
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 60
    seed: int = 0
    threads: int = 1  # fixed: CPU float sums depend on the thread count
    log_every: int = 25
    eval_every: int = 100
    eval_blocks: int = 64  # validation blocks per curve point (the final figure uses all)
    train_chars: int = 0  # 0: all of train.txt (tests use a prefix)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


DEFAULT = WikiLMRecipe()


def fixture_name(recipe: WikiLMRecipe = DEFAULT) -> str:
    """Cache folder name; a non-default recipe carries its digest."""
    base = f"wikilm-llama-{REVISION}"
    return base if recipe == DEFAULT else f"{base}-{recipe.digest()}"


def train_bpe(text: str, vocab: int) -> Any:
    """A byte-level BPE tokenizer trained on `text` (EOS doubles as BOS/UNK), as a transformers fast
    tokenizer."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def llama_config(recipe: WikiLMRecipe, vocab: int, eos_id: int) -> Any:
    """The fixture's architecture (also used by benchmarks that train it from other inits)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
                       num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                       num_key_value_heads=recipe.heads, max_position_embeddings=recipe.block_size,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=eos_id,
                       eos_token_id=eos_id, pad_token_id=eos_id, attention_dropout=0.0)


def unigram_loss(train_blocks: Any, validation_blocks: Any, vocab: int) -> float:
    """Validation cross-entropy (nats/token) of add-one unigram counts of the training tokens, on the
    positions the LM is scored on (every token of a block but the first)."""
    import torch

    counts = torch.bincount(train_blocks.reshape(-1), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[validation_blocks[:, 1:].reshape(-1)].mean())


def build(tmp: Path, recipe: WikiLMRecipe, train_txt: Path, val_txt: Path,
          progress: Any = None) -> dict[str, Any]:
    """Train the fixture into the folder `tmp`; returns the manifest fields (fixtures.py adds the rest)."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    from ggcompress.fixtures import _portable_tokenizer_config, safetensors_summary
    from ggcompress.methods.train import (
        TextData,
        TrainConfig,
        pack,
        perplexity,
        save_hf_model,
        tokenize,
        train,
    )

    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        text = train_txt.read_text(encoding="utf-8")
        if recipe.train_chars:
            text = text[: recipe.train_chars]
        tokenizer = train_bpe(text, recipe.vocab)
        vocab = len(tokenizer)
        eos = tokenizer.eos_token_id
        # one document per article block, as the engine's loader would: EOS between articles
        val_text = val_txt.read_text(encoding="utf-8")
        data = TextData(train=pack(tokenize(text.split("\n\n"), tokenizer), recipe.block_size),
                        validation=pack(tokenize(val_text.split("\n\n"), tokenizer), recipe.block_size),
                        source=str(train_txt), tokens=0)
        if len(data.train) < recipe.batch_size or len(data.validation) == 0:
            raise GGError(f"{train_txt}: too little text for blocks of {recipe.block_size} tokens")
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(llama_config(recipe, vocab, eos)).float()
        n_params = sum(p.numel() for p in model.parameters())
        uni = unigram_loss(data.train, data.validation, vocab)
        tcfg = TrainConfig(steps=recipe.steps, lr=recipe.lr, batch_size=recipe.batch_size,
                           block_size=recipe.block_size, weight_decay=recipe.weight_decay,
                           adam_betas=(0.9, 0.95), warmup_steps=recipe.warmup_steps, min_lr_ratio=0.1,
                           max_grad_norm=1.0, seed=recipe.seed, log_every=recipe.log_every,
                           eval_every=recipe.eval_every, eval_blocks=recipe.eval_blocks, save_every=0,
                           device="cpu")
        init_eval = perplexity(model, data.validation, batch_size=recipe.batch_size,
                               max_blocks=recipe.eval_blocks)
        res = train(model, data, tcfg, progress=progress)
        final = perplexity(model, data.validation, batch_size=recipe.batch_size)
        if not math.isfinite(final["loss"]):
            raise GGError(f"wiki-lm fixture: training diverged (validation loss {final['loss']})")
        model.generation_config.pad_token_id = eos
        save_hf_model(model, tokenizer, tmp, torch.float32)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        return {
            "source": f"trained here from seed {recipe.seed} on the text fixture (train.txt)",
            "model": "Llama (RMSNorm, SwiGLU, RoPE, tied embedding), fp32 as trained",
            "recipe": asdict(recipe),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "params": n_params,
            "data": {"train_blocks": len(data.train), "validation_blocks": len(data.validation),
                     "block_size": recipe.block_size, "train_tokens": int(data.train.numel()),
                     "validation_tokens": int(data.validation.numel()), "vocab": vocab},
            "training": {"tokens_seen": res.tokens_seen, "seconds": round(time.perf_counter() - t0, 1),
                         "cpu_seconds": round(time.process_time() - c0, 1),
                         "curve": [{"step": h["step"], "loss": round(h["loss"], 4)} for h in res.history],
                         "validation_curve": [{"step": 0, "loss": round(init_eval["loss"], 4)}] + [
                             {"step": e["step"], "loss": round(e["loss"], 4)} for e in res.evals]},
            "validation": {"loss": final["loss"], "ppl": final["ppl"], "tokens": final["tokens"]},
            "unigram_validation": {"loss": uni, "ppl": math.exp(uni)},
            "safetensors": safetensors_summary(tmp / "model.safetensors"),
        }
    finally:
        torch.set_num_threads(threads_before)

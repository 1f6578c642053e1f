"""The training engine: data formats and errors, batch order, schedule, perplexity, exact resume, DDP.

A tiny random Llama (hidden 32, 2 layers) with a byte-level BPE trained in-process on the real
Wikipedia fixture text (tests/tinylm.py): one step takes milliseconds on one thread.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ggcompress import fixtures
from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.methods.train import (
    BatchStream,
    Hook,
    TrainConfig,
    latest_checkpoint,
    load_causal_lm,
    load_data,
    lr_factor,
    perplexity,
    read_documents,
    train,
)

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder, build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    train_txt, val_txt = fixtures.text()
    root = tmp_path_factory.mktemp("corpus")
    text = train_txt.read_text(encoding="utf-8")
    (root / "train.txt").write_text(text[:120_000], encoding="utf-8")
    (root / "val.txt").write_text(val_txt.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return {"train": root / "train.txt", "val": root / "val.txt", "root": root}


@pytest.fixture(scope="module")
def tiny(corpus, tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "llama", corpus["train"].read_text())


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return build_tokenizer(corpus["train"].read_text())


# ---------------------------------------------------------------------------------------------- data


def test_formats_and_split(tmp_path, tokenizer) -> None:
    (tmp_path / "a.txt").write_text("First document.\n\nSecond paragraph of it.\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"text": "A record."}) + "\n\n" + json.dumps({"text": "Another one.", "id": 3}) + "\n")
    (tmp_path / "skip.csv").write_text("ignored")
    docs = read_documents(tmp_path)
    assert docs == ["First document.\n\nSecond paragraph of it.\n", "A record.", "Another one."]
    # Tokenizing piecewise + EOS between documents equals tokenizing each document whole.
    data = load_data(tmp_path, tokenizer, block_size=4, validation_fraction=0.25)
    eos = tokenizer.eos_token_id
    expect = []
    for d in docs:
        expect += tokenizer(d, add_special_tokens=False)["input_ids"] + [eos]
    n = len(expect) // 4
    blocks = torch.tensor(expect[: n * 4]).view(n, 4)
    n_val = max(1, round(0.25 * n))
    assert torch.equal(data.train, blocks[: n - n_val]) and torch.equal(data.validation, blocks[n - n_val:])


def test_given_validation_file(corpus, tokenizer) -> None:
    data = load_data(corpus["train"], tokenizer, 64, validation=corpus["val"])
    assert data.block_size == 64 and len(data.validation) > 10
    assert len(data.train) == len(load_data(corpus["train"], tokenizer, 64, validation=corpus["val"]).train)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("empty", "empty corpus"),
    ("blank_folder", "no .txt or .jsonl files"),
    ("bad_jsonl", "needs a string \"text\" field"),
    ("bad_suffix", "unsupported data file"),
    ("too_small", "need at least two blocks"),
    ("dataset", "not a loadable Hugging Face dataset"),  # HF_DATASETS_OFFLINE=1 (conftest)
])
def test_data_errors(tmp_path, tokenizer, case, message) -> None:
    paths = {"missing": tmp_path / "nope" / "train.txt", "empty": tmp_path / "empty.txt",
             "blank_folder": tmp_path / "folder", "bad_jsonl": tmp_path / "x.jsonl",
             "bad_suffix": tmp_path / "x.parquet", "too_small": tmp_path / "small.txt",
             "dataset": "no-such-dataset-ggc:sub"}
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "x.jsonl").write_text('{"content": "no text field"}\n')
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    (tmp_path / "small.txt").write_text("just a few words")
    with pytest.raises(GGError, match=message) as err:
        load_data(paths[case], tokenizer, 64)
    assert "\n" not in str(err.value) and str(paths[case]) in str(err.value)


def test_batch_order_independent_of_split() -> None:
    """A step's samples are the same for 1 process x 4, 1 process x 2 x accum 2, 2 processes x 2."""
    n, seed = 10, 3
    one = BatchStream(n, seed, 4, 1, 1, 0)
    acc = BatchStream(n, seed, 2, 2, 1, 0)
    ranks = [BatchStream(n, seed, 2, 1, 2, r) for r in range(2)]
    seen = []
    for step in range(7):  # 28 samples: crosses two epoch boundaries mid-batch
        a = one.indices(step, 0).tolist()
        assert a == acc.indices(step, 0).tolist() + acc.indices(step, 1).tolist()
        assert a == ranks[0].indices(step, 0).tolist() + ranks[1].indices(step, 0).tolist()
        seen += a
    for e in range(2):  # every epoch is a permutation of all blocks
        assert sorted(seen[e * n:(e + 1) * n]) == list(range(n))
    assert seen[:n] != seen[n:2 * n]


def test_lr_schedule() -> None:
    total, warm = 20, 4
    f = [lr_factor(s, total, warm, 0.1) for s in range(total)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    # cosine: halfway through the decay the factor is the midpoint of 1 and min_ratio
    assert lr_factor(4 + 8, total, warm, 0.1) == pytest.approx(0.55)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(GGError, match="batch_size"):
        TrainConfig(batch_size=0)


# ---------------------------------------------------------------------------------------------- model


def test_perplexity_matches_hf_loss(tiny, corpus) -> None:
    model, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus["train"], tok, 32, validation=corpus["val"])
    blocks = data.validation[:6]
    ev = perplexity(model, blocks, batch_size=4)
    with torch.no_grad():  # HF's loss: mean over the same (B·(T−1)) tokens, all blocks at once
        ref = float(model(input_ids=blocks, labels=blocks).loss.double())
    # Both are float32 logits reduced differently (float64 sums vs HF's float32 mean): agree to ~1e-6.
    assert ev["loss"] == pytest.approx(ref, rel=1e-5)
    assert ev["ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert ev["tokens"] == 6 * 31


def test_non_causal_model_is_refused(minilm_dir) -> None:
    with pytest.raises(GGError, match="not a causal language model"):
        load_causal_lm(minilm_dir)


class _Decay(Hook):
    """A hook with state that changes over time: an L2 loss term whose weight is set every 3 steps."""

    def __init__(self, model):
        self.w = [p for p in model.parameters() if p.ndim == 2]
        self.coef = 0.0
        self.crash_at: int | None = None

    def before_step(self, model, step):
        if self.crash_at == step:
            raise KeyboardInterrupt
        if step % 3 == 0:
            self.coef = 1e-3 * (1 + step)

    def loss_term(self, model, step):
        return self.coef * sum((p * p).sum() for p in self.w)

    def after_step(self, model, step):
        with torch.no_grad():
            self.w[0].mul_(0.999)

    def metrics(self, model, step):
        return {"coef": self.coef}

    def state_dict(self):
        return {"coef": self.coef}

    def load_state_dict(self, state):
        self.coef = state["coef"]


def _run(tiny, data, work_dir, crash_at=None, resume=False, **over):
    model, _, _ = load_causal_lm(tiny)
    hook = _Decay(model)
    hook.crash_at = crash_at
    cfg = TrainConfig(**{"steps": 8, "lr": 3e-3, "batch_size": 3, "grad_accum": 2, "block_size": 32,
                         "save_every": 2, "log_every": 3, "warmup_steps": 2, **over})
    result = train(model, data, cfg, work_dir=work_dir, hooks=[hook], resume=resume)
    return model, result


def test_resume_equals_uninterrupted(tiny, corpus, tmp_path) -> None:
    _, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus["train"], tok, 32)
    full, full_res = _run(tiny, data, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):  # dies during step index 5: steps 0-4 done, checkpoint at 4
        _run(tiny, data, tmp_path / "cut", crash_at=5)
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert ckpt is not None and ckpt.name == "step-000004"
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*"))) == 1  # keep_checkpoints=1
    resumed, res = _run(tiny, data, tmp_path / "cut", resume=True)
    assert res.resumed_from == 4
    # Same weights, Adam moments, schedule, data position and hook state: bit-identical on CPU.
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full_res.history]
    assert [h["coef"] for h in res.history] == [h["coef"] for h in full_res.history]
    assert not (tmp_path / "cut" / "checkpoints").exists() and (tmp_path / "cut" / "final").is_dir()
    # Resuming a finished run returns its result without training.
    again, res2 = _run(tiny, data, tmp_path / "cut", resume=True)
    assert res2.history == res.history
    assert torch.equal(again.lm_head.weight, full.lm_head.weight)


def test_resume_refuses_changed_settings(tiny, corpus, tmp_path) -> None:
    _, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus["train"], tok, 32)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, data, tmp_path / "w", crash_at=3)
    with pytest.raises(GGError, match="cannot resume: lr"):
        _run(tiny, data, tmp_path / "w", resume=True, lr=1e-3)


def test_bf16_autocast_trains(tiny, corpus) -> None:
    model, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus["train"], tok, 32)
    res = train(model, data, TrainConfig(steps=3, lr=1e-3, batch_size=2, block_size=32, bf16=True))
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


# ---------------------------------------------------------------------------------------------- DDP


def test_ddp_two_gloo_processes_match_one(tiny, corpus, tmp_path) -> None:
    """`torchrun --nproc-per-node 2 -m ggcompress backslash` (gloo, batch 2 each) vs one process, batch 4."""
    common = [str(tiny), "--data", str(corpus["train"]), "--rate-steps", "3", "--recover-steps", "1",
              "--mode", "loss", "--lambda", "50", "--shape-every", "2", "--lr", "3e-3", "--block-size", "32",
              "--eval-blocks", "4", "--save-every", "0"]
    one = CliRunner().invoke(cli, ["backslash", *common, "-o", str(tmp_path / "one"), "--batch-size", "4",
                                   "--json"])
    assert one.exit_code == 0, one.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "ggcompress", "backslash", *common, "-o", str(tmp_path / "two"), "--batch-size", "2",
         "--json"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(proc.stdout)  # only rank 0 printed the report
    assert r2["settings"]["world_size"] == 2 and r1["settings"]["world_size"] == 1
    assert r2["training"]["global_batch"] == r1["training"]["global_batch"] == 4
    # Same samples per step; the gradient is averaged in another order (gloo sum of two halves vs one
    # batch), so results differ by float32 rounding carried through 4 Adam steps. Observed: losses 8e-8
    # relative, weights 2e-6 absolute apart. Bounds: 100x / 50x that, still far below one step's change
    # (loss ~1e-2, weights ~lr = 3e-3); a wrong data split or unsynced gradients breaks them at once.
    l1 = [h["loss"] for h in r1["training"]["history"]]
    l2 = [h["loss"] for h in r2["training"]["history"]]
    assert l2 == pytest.approx(l1, rel=1e-5)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0, msg=k)
    assert r2["after"]["val_ppl"] == pytest.approx(r1["after"]["val_ppl"], rel=1e-4)
    assert not any((tmp_path / "two").glob("*.tmp*"))

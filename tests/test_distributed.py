"""FSDP2 sharding, DCP checkpoints across world sizes, per-rank memory: 2 gloo processes on CPU.

torch 2.13 runs FSDP2 (fully_shard) on CPU with gloo, so these are real sharded runs, not mocks.
Same tiny Llama + byte-level BPE as tests/test_train.py.
"""

from __future__ import annotations

import json
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
from ggcompress.methods import distributed as dd
from ggcompress.methods.train import Hook, TrainConfig, load_causal_lm, load_data, train

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder  # noqa: E402

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    train_txt, _ = fixtures.text()
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(train_txt.read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(corpus, tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "llama", corpus.read_text())


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", *args], capture_output=True, text=True, env=env, timeout=300)


def test_fsdp_backslash_matches_one_process(tiny, corpus, tmp_path) -> None:
    """`torchrun -n 2 ... backslash --shard fsdp` (batch 2 each) vs one process (batch 4)."""
    common = [str(tiny), "--data", str(corpus), "--rate-steps", "3", "--recover-steps", "1", "--mode",
              "loss", "--lambda", "50", "--shape-every", "2", "--lr", "3e-3", "--block-size", "32",
              "--eval-blocks", "5", "--save-every", "0", "--json"]
    one = CliRunner().invoke(cli, ["backslash", *common, "-o", str(tmp_path / "one"), "--batch-size", "4"])
    assert one.exit_code == 0, one.output
    proc = _torchrun(["-m", "ggcompress", "backslash", *common, "-o", str(tmp_path / "two"),
                      "--batch-size", "2", "--shard", "fsdp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(proc.stdout)
    assert r2["training"]["sharding"] == {"kind": "fsdp", "blocks": 2, "cpu_offload": False,
                                          "mixed_precision": False}
    # Same samples per step; FSDP reduce-scatters the two halves' gradients (gloo sum, then /2) where
    # one process backpropagates one batch of 4, so only float32 summation order differs, carried
    # through 4 Adam steps. Observed: losses 3e-8 relative, weights 2e-5 absolute apart (Adam divides
    # tiny gradients by their tiny RMS, so near-zero-gradient weights move by ~lr whatever their
    # rounding). Bounds: losses 1e-5 relative, weights 1e-4 (30x below the lr = 3e-3 one step moves
    # a weight by): an unsynced gradient, a wrong data split or a rate term counted twice breaks both.
    l1 = [h["loss"] for h in r1["training"]["history"]]
    l2 = [h["loss"] for h in r2["training"]["history"]]
    assert l2 == pytest.approx(l1, rel=1e-5)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0, msg=k)
    # ν (re-estimated from shard sums all-reduced), bits (merged shard histograms), sparsity, ppl
    for key in ("nu_mean", "nu_global", "val_ppl"):
        assert r2["after"][key] == pytest.approx(r1["after"][key], rel=1e-4), key
    assert r2["after"]["params"] == r1["after"]["params"]
    # Before training (--shard fsdp: rank 0 reads the checkpoint, rank 1 builds the model on the meta
    # device, rank 0 broadcasts into the shards, so this is measured on shards too): histogram-based
    # numbers (bits, zeros, distinct symbols) merge integer counts and are identical; ν comes from
    # per-shard float32 sums (shape_sums sums in the weights' dtype), grouped differently than over
    # whole tensors: ~1e-7 relative on the sums, observed 4e-7 on ν; perplexity batches the
    # validation blocks differently over 2 ranks (float32 logits, 1e-7 relative).
    for key, v in r1["before"].items():
        if key.startswith("val_"):
            assert r2["before"][key] == pytest.approx(v, rel=1e-6), key
        elif key.startswith("nu_"):
            assert r2["before"][key] == pytest.approx(v, rel=1e-5), key
        else:
            assert r2["before"][key] == v, key
    # Per-rank parameter + gradient + AdamW bytes: FSDP holds half of what one replica (DDP) holds.
    b1, b2 = r1["training"]["rank_bytes"], r2["training"]["rank_bytes"]
    # fp32 weights + grads + 2 AdamW moments = 16 B per parameter: the Linear weights (tied head = the
    # embedding) and the 5 RMSNorm weights of 32 (2 per block, 1 final); plus AdamW's 4-byte step
    # counter per tensor (20 tensors).
    assert b1["total"] == 16 * (r1["after"]["params"] + 5 * 32) + 4 * 20
    assert abs(b2["total"] - b1["total"] / 2) <= 0.01 * b1["total"], (b1, b2)


def test_fsdp_deepshape_matches_one_process(tiny, corpus, tmp_path) -> None:
    """deepshape --shard fsdp: remap on whole tensors before sharding, then a sharded fine-tune with the
    teacher sharded too (--distill) and a rate term; same numbers as one process."""
    common = [str(tiny), "--data", str(corpus), "--step", "2^-8", "--block-size", "32", "--eval-blocks", "4",
              "--finetune-steps", "2", "--lr", "3e-3", "--distill", "--rate-lambda", "50", "--json"]
    one = CliRunner().invoke(cli, ["deepshape", *common, "-o", str(tmp_path / "one"), "--batch-size", "4"])
    assert one.exit_code == 0, one.output
    # --cpu-offload: on CPU the shards already live in host memory, so the numbers must not move; this
    # runs FSDP's CPUOffloadPolicy code path (unpinned without CUDA).
    proc = _torchrun(["-m", "ggcompress", "deepshape", *common, "-o", str(tmp_path / "two"), "--batch-size",
                      "2", "--shard", "fsdp", "--cpu-offload"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(proc.stdout)
    assert r2["settings"]["world_size"] == 2 and r2["training"]["sharding"]["kind"] == "fsdp"
    assert r2["training"]["sharding"]["cpu_offload"]
    assert r2["reshape"] == r1["reshape"]  # the remap ran on the same whole tensors
    # Same float32-summation-order bounds as the backslash test above.
    l1 = [h["loss"] for h in r1["training"]["history"]]
    assert [h["loss"] for h in r2["training"]["history"]] == pytest.approx(l1, rel=1e-5)
    assert r2["finetuned"]["val_ppl"] == pytest.approx(r1["finetuned"]["val_ppl"], rel=1e-4)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0, msg=k)


class _Stop(Exception):
    pass


class _Interrupt(Hook):
    def __init__(self, at: int):
        self.at = at

    def before_step(self, model, step):
        if step == self.at:
            raise _Stop


def _cfg(**over) -> TrainConfig:
    return TrainConfig(**{"steps": 4, "lr": 3e-3, "batch_size": 4, "block_size": 32, "save_every": 2,
                          "log_every": 1, "warmup_steps": 1, **over})


def _loaded_state(tiny: Path, ckpt: Path) -> dict:
    """One process: fresh model + AdamW with a checkpoint loaded (what a resumed run starts from)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from ggcompress.methods.train import _load_checkpoint, build_optimizer

    model, _, _ = load_causal_lm(tiny)
    opt, sched = build_optimizer(model, _cfg())
    _load_checkpoint(ckpt, model, opt, sched)
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {"model": msd, "optimizer": osd["state"]}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys() and a["optimizer"].keys() == b["optimizer"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["optimizer"]:
        for m in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["optimizer"][k][m], b["optimizer"][k][m]), (k, m)


def test_resume_across_world_sizes(tiny, corpus, tmp_path) -> None:
    """A checkpoint written by 2 FSDP ranks resumes on 1 process, one written by 1 process on 2 FSDP
    ranks: the loaded weights and AdamW moments are bit-identical whoever reads them."""
    model, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus, tok, 32)
    full = train(model, data, _cfg())  # uninterrupted, one process, global batch 4
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    one_cut = tmp_path / "one_cut"
    with pytest.raises(_Stop):  # steps 0-2 done, checkpoint at step 2
        train(load_causal_lm(tiny)[0], data, _cfg(), work_dir=one_cut, hooks=[_Interrupt(3)])
    loaded_one = _loaded_state(tiny, one_cut / "checkpoints" / "step-000002")  # the worker resumes it

    out = tmp_path / "out"
    out.mkdir()
    job = {"model": str(tiny), "data": str(corpus), "out": str(out), "cut_dir": str(tmp_path / "two_cut"),
           "resume_dir": str(one_cut)}
    proc = _torchrun([str(ROOT / "tests" / "dist_worker.py"), json.dumps(job)])
    assert proc.returncode == 0, proc.stderr[-3000:]

    # 1 -> 2: the two sharded ranks read exactly what one process wrote (and reads back itself).
    _assert_same_state(torch.load(out / "loaded_resume.pt", weights_only=True), loaded_one)
    # 2 -> 1: one process reads exactly the live weights the two ranks held, and the same optimizer
    # state as the two ranks read back.
    two_ckpt = tmp_path / "two_cut" / "checkpoints" / "step-000002"
    loaded_two = _loaded_state(tiny, two_ckpt)
    _assert_same_state(torch.load(out / "loaded_cut.pt", weights_only=True), loaded_two)
    live = torch.load(out / "live_2ranks.pt", weights_only=True)
    for k, v in live.items():
        assert torch.equal(loaded_two["model"][k], v), k
    resumed, res = load_causal_lm(tiny)[0], None
    res = train(resumed, data, _cfg(), work_dir=tmp_path / "two_cut", resume=True, hooks=[_Interrupt(99)])
    assert res.resumed_from == 2
    # Both resumed runs end where the uninterrupted one does, up to the float32 summation order of
    # the steps run on 2 ranks (the 2-process DDP/FSDP bound of test_fsdp_backslash_matches_one_process).
    two = torch.load(out / "resumed_2ranks.pt", weights_only=True)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=1e-4, rtol=0, msg=k)
        if k in two:
            torch.testing.assert_close(two[k], ref[k], atol=1e-4, rtol=0, msg=k)
    # Loss history: the checkpointed steps are carried over exactly, the rest agree to float tolerance.
    losses = [h["loss"] for h in full.history]
    assert [h["loss"] for h in res.history] == pytest.approx(losses, rel=1e-5)
    two_hist = json.loads((out / "resumed_2ranks.json").read_text())["history"]
    assert [h["loss"] for h in two_hist[:2]] == [h["loss"] for h in full.history[:2]]
    assert [h["loss"] for h in two_hist] == pytest.approx(losses, rel=1e-5)


def test_resume_refuses_another_global_batch(tiny, corpus, tmp_path) -> None:
    model, tok, _ = load_causal_lm(tiny)
    data = load_data(corpus, tok, 32)
    with pytest.raises(_Stop):
        train(model, data, _cfg(), work_dir=tmp_path, hooks=[_Interrupt(3)])
    with pytest.raises(GGError, match="cannot resume: global_batch was 4 .*, now 2"):
        train(load_causal_lm(tiny)[0], data, _cfg(batch_size=2), work_dir=tmp_path, resume=True,
              hooks=[_Interrupt(99)])
    # the same global batch split differently resumes
    res = train(load_causal_lm(tiny)[0], data, _cfg(batch_size=2, grad_accum=2), work_dir=tmp_path,
                resume=True, hooks=[_Interrupt(99)])
    assert res.resumed_from == 2


def test_fsdp_needs_torchrun(tiny, corpus, tmp_path) -> None:
    model, tok, _ = load_causal_lm(tiny)
    with pytest.raises(GGError, match="--shard fsdp needs several processes"):
        train(model, load_data(corpus, tok, 32), _cfg(shard="fsdp", save_every=0))
    with pytest.raises(GGError, match="--cpu-offload needs --shard fsdp"):
        _cfg(cpu_offload=True)
    # The commands refuse before loading anything or creating the output.
    for cmd, flags in (("backslash", ["--shard", "fsdp"]), ("deepshape", ["--grad-bits", "4"])):
        args = [cmd, str(tiny), "--data", str(corpus), "-o", str(tmp_path / cmd), *flags]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and "launch with torchrun" in res.output, res.output
        assert not (tmp_path / cmd).exists()


def test_memory_per_rank_table() -> None:
    """The docs' memory table: parameter counts from public configs, 16 B/param replicated or divided."""
    n7, block7 = dd.llama_param_count(**dd.REFERENCE_MODELS["Llama-2-7B"])
    assert n7 == 6_738_415_616  # Llama-2-7b's published parameter count (HF model card: 6.74B)
    n1, _ = dd.llama_param_count(**dd.REFERENCE_MODELS["Llama-3.2-1B"])
    assert n1 == 1_235_814_400  # Llama-3.2-1B (tied embeddings): 1.24B
    ddp = dd.memory_per_rank(n7, block7, 8, "ddp")
    fsdp = dd.memory_per_rank(n7, block7, 8, "fsdp")
    assert ddp.total == 16 * n7 and fsdp.total == 2 * n7 + 2 * block7 * 4
    rows = dd.memory_table((1, 8))
    assert {(r["model"], r["world"], r["shard"]) for r in rows} >= {("Llama-2-70B", 8, "fsdp")}


def test_transformer_blocks_found(tiny) -> None:
    model, _, _ = load_causal_lm(tiny)
    assert dd.transformer_blocks(model) == list(model.model.layers)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=64, n_positions=16))
    assert dd.transformer_blocks(gpt2) == list(gpt2.transformer.h)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="FSDP2 over NCCL needs 2 CUDA devices; the CPU/gloo tests above cover the logic")
def test_fsdp_on_two_gpus_bf16_cpu_offload(tiny, corpus, tmp_path) -> None:
    """The GPU path: NCCL, MixedPrecisionPolicy (bf16 compute, fp32 reduce), pinned CPU offload, DCP."""
    common = [str(tiny), "--data", str(corpus), "--rate-steps", "3", "--recover-steps", "1", "--lambda", "50",
              "--lr", "3e-3", "--block-size", "32", "--eval-blocks", "4", "--save-every", "2",
              "--keep-checkpoints", "--bf16", "--device", "cuda", "--json"]
    one = CliRunner().invoke(cli, ["backslash", *common, "-o", str(tmp_path / "one"), "--batch-size", "4"])
    assert one.exit_code == 0, one.output
    proc = _torchrun(["-m", "ggcompress", "backslash", *common, "-o", str(tmp_path / "two"), "--batch-size",
                      "2", "--shard", "fsdp", "--cpu-offload"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(proc.stdout)
    assert r2["training"]["sharding"] == {"kind": "fsdp", "blocks": 2, "cpu_offload": True,
                                          "mixed_precision": True}
    # bf16 compute both ways (autocast vs FSDP's bf16 parameters): bf16 has 8 significant bits, so the
    # losses agree to ~1e-2 relative, not to float32 rounding.
    l1 = [h["loss"] for h in r1["training"]["history"]]
    assert [h["loss"] for h in r2["training"]["history"]] == pytest.approx(l1, rel=2e-2)
    assert (tmp_path / "two" / "training" / "backslash" / "final" / "model.safetensors").is_file()

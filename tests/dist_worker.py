"""Run under `torchrun --nproc-per-node 2` by tests/test_distributed.py (FSDP2 on gloo, CPU).

argv[1] is a JSON job: {"model", "data", "out", "cut_dir", "resume_dir"}. It does, in one launch
(process start-up dominates the test's time):
1. a fresh FSDP run in `cut_dir` interrupted before step index 2 (checkpoint after 2 steps), saving the live
   weights at the interruption (`live_2ranks.pt`);
2. load that checkpoint and the one in `resume_dir` (written by 1 process) into fresh sharded models,
   saving the gathered model + optimizer state (`loaded_cut.pt`, `loaded_resume.pt`);
3. resume `resume_dir` (1 -> 2 ranks) to the end, saving the final weights (`resumed_2ranks.pt`);
4. resume it again, finished, into a model sharded at load: the same weights come back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ggcompress.methods import distributed as dd
from ggcompress.methods.train import Hook, TrainConfig, distributed, load_causal_lm, load_data, train

CONFIG = {"steps": 4, "lr": 3e-3, "batch_size": 2, "block_size": 32, "save_every": 2, "log_every": 1,
          "warmup_steps": 1, "shard": "fsdp"}


class Stop(Exception):
    pass


class Interrupt(Hook):
    """Saves the full weights before step `at` (collective), then stops the run."""

    def __init__(self, at: int, path: Path, is_main: bool):
        self.at, self.path, self.is_main = at, path, is_main

    def before_step(self, model, step):
        if step == self.at:
            full = dict(dd.full_tensors(model))
            if self.is_main:
                torch.save(full, self.path)
            raise Stop


def loaded_state(model_dir: str, ckpt: Path, cfg: TrainConfig) -> dict:
    """Fresh sharded model + AdamW with the checkpoint loaded, gathered to full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from ggcompress.methods.train import _load_checkpoint, build_optimizer

    model, _, _ = load_causal_lm(model_dir, "cpu")
    dd.fsdp_wrap(model, "cpu")
    opt, sched = build_optimizer(model, cfg)
    _load_checkpoint(ckpt, model, opt, sched)
    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": msd, "optimizer": osd.get("state", {})}  # full on rank 0, empty elsewhere


def main() -> None:
    job = json.loads(sys.argv[1])
    out = Path(job["out"])
    with distributed("cpu") as info:
        cfg = TrainConfig(**CONFIG)
        model, tok, _ = load_causal_lm(job["model"], "cpu")
        data = load_data(job["data"], tok, cfg.block_size)
        try:
            train(model, data, cfg, work_dir=job["cut_dir"], hooks=[Interrupt(2, out / "live_2ranks.pt",
                                                                               info.is_main)])
        except Stop:
            pass
        for name, folder in (("cut", job["cut_dir"]), ("resume", job["resume_dir"])):
            state = loaded_state(job["model"], Path(folder) / "checkpoints" / "step-000002", cfg)
            if info.is_main:
                torch.save(state, out / f"loaded_{name}.pt")
        model, _, _ = load_causal_lm(job["model"], "cpu")
        res = train(model, data, cfg, work_dir=job["resume_dir"], resume=True,
                    hooks=[Interrupt(99, out / "unused.pt", info.is_main)])  # same hook list as saved
        full = dict(dd.full_tensors(model))
        # 4. resuming the finished run on a model sharded at load (rank 0 reads, rank 1 on meta) gives
        # back the finished weights, on the shards
        again, _, _ = dd.load_sharded(job["model"], "cpu")
        res2 = train(again, data, cfg, work_dir=job["resume_dir"], resume=True,
                     hooks=[Interrupt(99, out / "unused.pt", info.is_main)])
        for name, t in dd.full_tensors(again):
            assert torch.equal(t, full[name]), name
        assert res2.history == res.history
        if info.is_main:
            torch.save(full, out / "resumed_2ranks.pt")
            (out / "resumed_2ranks.json").write_text(json.dumps(res.to_dict()))


if __name__ == "__main__":
    main()

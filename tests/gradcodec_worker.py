"""Run under `torchrun --nproc-per-node 2` by tests/test_gradcodec.py (DDP on gloo, CPU).

argv: model folder, corpus, output JSON. (1) One DDP backward with the codec hook recording: the
averaged bucket every rank gets must equal the mean of every rank's own quantized values, which
are exchanged here uncompressed to check; (2) short training runs: plain DDP with seeds 0, 1, 2
and the codec at 4 bits (error feedback on) with seed 0; rank 0 writes the loss histories.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from ggcompress.methods.gradcodec import register
from ggcompress.methods.train import TrainConfig, distributed, load_causal_lm, load_data, train


def check_decoded(model_dir: str, data) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model, _, _ = load_causal_lm(model_dir, "cpu")
    ddp = DistributedDataParallel(model)
    state = register(ddp, 4.0, record=True)
    batch = data.train[dist.get_rank() * 2: dist.get_rank() * 2 + 2]
    ddp(input_ids=batch, labels=batch).loss.backward()
    checked = 0
    for rec in state.last.values():
        own = rec["own"]
        every = [torch.empty_like(own) for _ in range(dist.get_world_size())]
        dist.all_gather(every, own)  # uncompressed, for the check only
        expect = (sum(every[1:], every[0]) / len(every)).to(torch.float32)
        assert torch.equal(rec["mean"], expect), "decoded bucket differs from the quantized values"
        checked += own.numel()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return {"checked_values": checked, "grad_values": grads.numel(), "nonzero_grads": int((grads != 0).sum())}


def main() -> None:
    model_dir, corpus, out = sys.argv[1:4]
    with distributed("cpu") as info:
        _, tok, _ = load_causal_lm(model_dir, "cpu")
        data = load_data(corpus, tok, 32)
        doc = {"decode": check_decoded(model_dir, data), "runs": {}}
        for name, over in [("plain0", {"seed": 0}), ("plain1", {"seed": 1}), ("plain2", {"seed": 2}),
                           ("codec0", {"seed": 0, "grad_bits": 4.0})]:
            model, _, _ = load_causal_lm(model_dir, "cpu")
            cfg = TrainConfig(**{"steps": 20, "lr": 3e-3, "batch_size": 2, "block_size": 32, "log_every": 1,
                                 "save_every": 0, **over})
            res = train(model, data, cfg)
            doc["runs"][name] = {"loss": [h["loss"] for h in res.history], "comm": res.comm}
        if info.is_main:
            with open(out, "w") as f:
                json.dump(doc, f)


if __name__ == "__main__":
    main()

"""The gradient-rate DDP communication hook: the codec alone, then 2 gloo processes on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ggcompress import fixtures
from ggcompress.errors import GGError
from ggcompress.methods.gradcodec import GradCodecState, decode, encode, grid_step
from ggcompress.methods.train import TrainConfig
from ggcompress.stats import gg

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder  # noqa: E402

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("beta", [0.6, 1.0, 2.0])
@pytest.mark.parametrize("bits", [2.0, 4.0])
def test_decode_returns_the_quantized_values(beta, bits) -> None:
    g = torch.Generator().manual_seed(7)
    v = gg.sample(20_000, beta, 1e-3, generator=g).double()
    enc = encode(v, bits)
    out = decode(enc.payload)
    assert torch.equal(out, enc.q.double() * enc.step)  # exact: the code is lossless
    assert torch.equal(enc.q, torch.round(v / enc.step).to(torch.int64))
    assert (out - v).abs().max() <= enc.step / 2 + 1e-18  # rounding to the nearest grid point
    # The grid comes from the fitted GG's entropy: the empirical entropy of the symbols lands near the
    # target (high-rate approximation: within 0.25 bit at 4 bits, looser at 2 where it breaks down),
    # and exp-Golomb with the best order costs at most ~0.6 bit more (it is not an entropy coder).
    _, counts = torch.unique(enc.q, return_counts=True)
    p = counts.double() / counts.sum()
    h = float(-(p * p.log2()).sum())
    assert abs(h - bits) < (0.25 if bits >= 4 else 0.6), h
    coded = 8 * (len(enc.payload) - 17) / v.numel()
    assert h <= coded <= h + 0.6, (h, coded)


def test_zero_and_empty_buckets() -> None:
    z = torch.zeros(100, dtype=torch.float64)
    assert grid_step(z, 4.0) == 1.0 and torch.equal(decode(encode(z, 4.0).payload), z)
    e = torch.zeros(0, dtype=torch.float64)
    assert decode(encode(e, 4.0).payload).numel() == 0
    with pytest.raises(GGError, match="shorter than its header"):
        decode(b"\x00")


def test_summary_counts_ring_bytes() -> None:
    st = GradCodecState(bits=4.0, payload_bytes=3000, values=8000)
    s = st.summary(steps=2, world=4)
    assert s["bits_per_value"] == pytest.approx(3.0)
    assert s["sent_bytes_per_step"] == 3 * 1500 and s["allreduce_bytes_per_step"] == 2 * 3 / 4 * 4 * 4000
    assert s["sent_vs_allreduce"] == pytest.approx(3.0 * 4 / 64)  # bits · world / 64 (module doc)


def test_config_refuses_codec_without_ddp() -> None:
    with pytest.raises(GGError, match="use --shard ddp"):
        TrainConfig(grad_bits=4.0, shard="fsdp")
    with pytest.raises(GGError, match="grad bits must be in"):
        TrainConfig(grad_bits=-1)


def test_two_gloo_processes(tmp_path) -> None:
    train_txt, _ = fixtures.text()
    corpus = tmp_path / "train.txt"
    corpus.write_text(train_txt.read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    model = build_model_folder(tmp_path / "tiny", corpus.read_text())
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    worker = str(ROOT / "tests" / "gradcodec_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", worker, str(model), str(corpus), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    # Every bucket: what each rank decoded from the others' payloads is their quantized gradient.
    d = doc["decode"]
    assert d["checked_values"] == d["grad_values"] and d["nonzero_grads"] > 0.5 * d["grad_values"]
    runs = doc["runs"]
    comm = runs["codec0"]["comm"]
    assert 3.5 < comm["bits_per_value"] < 5.0  # target 4 (entropy ~4, exp-Golomb overhead < 1)
    assert comm["sent_vs_allreduce"] < 0.2  # 2 ranks: ~4.2 bits vs 2·(1/2)·32 bits per value
    # Error feedback keeps the loss where data order alone moves it: the codec's deviation from the
    # plain run with the same seed (mean of the last 5 steps) is within the spread of 3 plain seeds.
    # (Measured on this tiny model, 20 steps: deviation 0.003, spread 0.047.)
    final = {k: sum(v["loss"][-5:]) / 5 for k, v in runs.items()}
    plain = [final[f"plain{s}"] for s in range(3)]
    assert abs(final["codec0"] - final["plain0"]) <= max(plain) - min(plain)
    assert all(math.isfinite(x) for x in runs["codec0"]["loss"])

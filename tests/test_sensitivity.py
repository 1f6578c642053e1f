"""Squared-gradient sensitivity (ggcompress.stats.sensitivity) against torch.func autograd in float64,
on the tiny random Llama of tests/tinylm.py, and through `analyze --calib`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tinylm import calibrated_model

from ggcompress.cli import cli
from ggcompress.io.loading import load_model
from ggcompress.stats import sensitivity


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, text_files) -> tuple[Path, str, Path]:
    folder, calib, text = calibrated_model(tmp_path_factory.mktemp("tinylm"), text_files[0])
    return folder, text, calib


def test_fisher_matches_float64_autograd(tiny) -> None:
    folder, text, _ = tiny
    lm = load_model(folder, dtype="float32")
    assert sensitivity.context_length(lm.model, lm.tokenizer) == 128  # tinylm: max_position_embeddings
    windows = sensitivity.calibration_windows(lm.tokenizer, text, 3, 128)
    assert windows.shape == (3, 128)
    fisher, loss = sensitivity.diagonal_fisher(lm.model, windows)
    assert all(p.grad is None for p in lm.model.parameters())  # gradients are cleared afterwards

    # Reference: per-window gradients by torch.func in float64, an independent code path.
    model = lm.model.double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def window_loss(p, ids):
        return torch.func.functional_call(model, p, (ids,), {"labels": ids}).loss

    grad = torch.func.grad(window_loss)
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    losses = []
    for w in windows:
        g = grad(params, w[None])
        losses.append(float(window_loss(params, w[None])))
        for n in ref:
            ref[n] += g[n] ** 2
    assert set(fisher) == set(ref)
    for n, r in ref.items():
        r = r / len(windows)
        # float32 forward/backward vs float64: gradients agree to ~1e-6 relative, their squares to ~2e-6;
        # 1e-4 relative (of each tensor's largest entry for the near-zero ones) leaves a wide margin.
        torch.testing.assert_close(fisher[n].double(), r, rtol=1e-4, atol=1e-4 * float(r.max()))
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)


def test_measure_clamps_windows_to_the_context_and_reports_rows(tiny) -> None:
    folder, text, _ = tiny
    rep = sensitivity.measure(folder, text, windows=2, length=512, top=3)
    assert (rep.windows, rep.window_tokens, rep.requested_tokens, rep.context) == (2, 128, 512, 128)
    assert rep.seconds_cpu > 0 and rep.seconds_wall > 0
    assert sum(t.share for t in rep.tensors.values()) == pytest.approx(1.0, rel=1e-9)
    t = rep.tensors["model.layers.0.mlp.down_proj.weight"]
    assert t.row_sum.shape == (32,) and t.row_sum.sum() == pytest.approx(t.fisher_sum, rel=1e-6)
    d = t.to_dict()
    assert len(d["top_rows"]) == 3 and d["top_rows"][0]["fisher_sum"] == pytest.approx(t.row_sum.max())


def test_analyze_calib_end_to_end(tiny, minilm_dir: Path) -> None:
    folder, _, calib = tiny
    res = CliRunner().invoke(cli, ["analyze", str(folder), "--calib", str(calib), "--calib-windows", "2",
                                   "--json"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    ck = json.loads(res.stdout)["checkpoints"][0]
    s = ck["summary"]["sensitivity"]
    assert (s["windows"], s["window_tokens"], s["requested_tokens"]) == (2, 128, 512)
    ts = {t["name"]: t for t in ck["tensors"]}
    assert ts["model.layers.1.self_attn.q_proj.weight"]["sensitivity"]["fisher_sum"] > 0
    assert ck["roles"]["attn_q"]["fisher_share"] > 0
    res = CliRunner().invoke(cli, ["analyze", str(folder), "--calib", str(calib), "--calib-windows", "1",
                                   "--include", "layers.0.mlp"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0 and "Fisher" in res.stderr  # tables go to stderr (docs/cli.md)
    assert "clamped from 512 to the context 128" in res.stderr
    # An encoder has no next-token loss: one clear line, exit 1.
    res = CliRunner().invoke(cli, ["analyze", str(minilm_dir), "--calib", str(calib)])
    assert res.exit_code == 1 and "not a causal language model" in res.stderr

"""pack --max-kl (codec/klalloc.py): the KL target is met by the packed model as unpack restores it (checked
independently from the .ggz), tighter targets cost more bits, the weighted-error allocation, the three
search methods, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tinylm import calibrated_model

from ggcompress.cli import cli
from ggcompress.codec import klalloc, rdalloc
from ggcompress.codec import pack as P
from ggcompress.codec import trellis as T
from ggcompress.errors import GGError
from ggcompress.io.checkpoint import open_checkpoint
from ggcompress.io.loading import load_model
from ggcompress.stats import sensitivity

#: Small calibration for speed: 2 Fisher windows + 2 held-out windows of 64 tokens.
CAL = {"calibration_windows": 2, "calibration_length": 64}


@pytest.fixture(scope="module")
def lm(tmp_path_factory, text_files) -> tuple[Path, Path, str]:
    """A tiny random Llama whose outputs depend on its weights (init std 0.2: peaked distributions)."""
    return calibrated_model(tmp_path_factory.mktemp("kl"), text_files[0], init_std=0.2)


@pytest.fixture(scope="module")
def packed(lm, tmp_path_factory) -> dict[float, tuple[Path, dict]]:
    folder, calib, _ = lm
    out = {}
    for k in (0.01, 0.002):
        path = tmp_path_factory.mktemp("ggz") / f"kl{k}.ggz"
        doc = P.pack(folder, path, P.PackOptions(max_kl=k, calibration=str(calib), coder="rans", **CAL))
        out[k] = path, doc["checkpoints"][0]
    return out


def kl_float64(base: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """Per-token KL(P_base ‖ P_model) from raw logits, float64 — written here, not compare_logits."""
    lp = base.double() - torch.logsumexp(base.double(), -1, keepdim=True)
    lq = model.double() - torch.logsumexp(model.double(), -1, keepdim=True)
    return (lp.exp() * (lp - lq)).sum(-1)


def test_packed_model_meets_the_kl_and_the_report_says_what_it_is(lm, packed) -> None:
    folder, _, text = lm
    base = load_model(folder, dtype="float32")
    _, held = klalloc.split_windows(base.tokenizer, text, CAL["calibration_windows"],
                                    CAL["calibration_length"])
    assert held.shape == (2, 64)
    with torch.inference_mode():
        base_logits = base.model(input_ids=held).logits[:, :-1]
    for k, (path, ck) in packed.items():
        a = ck["allocation"]
        restored = load_model(path, dtype="float32")  # the .ggz, unpacked as any reader gets it
        with torch.inference_mode():
            logits = restored.model(input_ids=held).logits[:, :-1]
        kl = float(kl_float64(base_logits, logits).mean())
        assert a["measured_kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
        assert kl <= k and ck["summary"]["kl_mean"] == a["measured_kl"]
        assert ck["quantization"] == {"method": "steps", "max_kl": k}
        # the report: chosen steps, predicted vs measured, the Fisher's cost, every KL evaluation
        weights = {t["name"] for t in ck["tensors"] if t["encoding"] == "step"}
        assert set(a["steps"]) == weights and all(s.startswith("2^-") for s in a["steps"].values())
        assert a["kl_evaluations"] == len(a["evaluations"]) >= 1 and a["method"] == "fisher"
        assert any(e["meets"] and e["measured_kl"] == a["measured_kl"] for e in a["evaluations"])
        c = a["calibration"]
        assert (c["fisher_windows"], c["kl_windows"], c["window_tokens"], c["kl_tokens"]) == (2, 2, 64, 126)
        assert c["fisher_seconds_cpu"] > 0 and c["text"].endswith("calib.txt")
        assert a["predicted_kl"] > 0 and a["kl_scale"] == pytest.approx(a["measured_kl"] / a["predicted_kl"])
        # the curves' bit estimate is near what was stored (their 24 bits per table symbol overstate the
        # tables of tensors this small: 4% here)
        assert a["predicted_coded_bits_per_param"] == pytest.approx(ck["summary"]["coded_bits_per_param"],
                                                                    rel=0.06)


def test_tighter_kl_costs_more_bits(packed) -> None:
    loose, tight = packed[0.01][1], packed[0.002][1]
    assert tight["summary"]["coded_bits_per_param"] > loose["summary"]["coded_bits_per_param"] + 0.5
    assert tight["allocation"]["measured_kl"] < loose["allocation"]["measured_kl"]


def test_search_methods_meet_the_target_and_uniform_is_one_step(lm) -> None:
    folder, _, text = lm
    ck = open_checkpoint(folder)
    names = [i.name for i in ck.tensors if i.is_float and len(i.shape) >= 2]
    cal = klalloc.calibrate(folder, names, text, windows=2, length=64)
    curves = [rdalloc.measure_curve(x, i.name, per_octave=4) for i, x in ck.iter_tensors(names)]
    found = {m: klalloc.search(curves, cal, 0.005, method=m) for m in klalloc.METHODS}
    for m, r in found.items():
        assert r.measured_kl <= 0.005 and r.method == m
        # the reported KL is the probe's measurement of exactly these steps
        assert cal.probe.kl({n: 2.0 ** -s for n, s in r.steps.items()}) == r.measured_kl
    assert len(set(found["uniform"].steps.values())) == 1
    assert len(set(found["fisher"].steps.values())) > 1
    assert cal.probe.evaluations == sum(len(r.evaluations) for r in found.values()) + len(found)
    with pytest.raises(GGError, match="out of reach"):
        klalloc.search(curves, cal, 1e-30)


def test_weighted_distortion_budget_is_met_and_weights_move_steps() -> None:
    g = torch.Generator().manual_seed(0)
    curves = [rdalloc.measure_curve(torch.randn(64, 128, generator=g) * 0.05, n, per_octave=4) for n in "abc"]
    weights = {"a": 10.0, "b": 1.0, "c": 0.1}
    d = 3e-3 * sum(c.noise[8 * 4] for c in curves)  # a budget between the coarsest and finest steps
    a = rdalloc.allocate(curves, max_distortion=d, weights=weights)
    assert a.distortion <= d and a.target == {"max_distortion": d}
    assert a.distortion == pytest.approx(sum(weights[c.name] * c.noise[list(c.s).index(a.steps[c.name])]
                                             for c in curves))
    # same-shaped tensors: the more an error costs, the finer the step
    assert a.steps["a"] > a.steps["b"] > a.steps["c"]
    flat = rdalloc.allocate(curves, max_distortion=d)
    assert len(set(flat.steps.values())) == 1
    with pytest.raises(GGError, match="out of reach"):
        rdalloc.allocate(curves, max_distortion=1e-30)


def test_sampled_label_fisher_is_seeded_and_clears_gradients(lm) -> None:
    folder, _, text = lm
    model = load_model(folder, dtype="float32").model
    win = sensitivity.calibration_windows(load_model(folder).tokenizer, text, 2, 32)
    f1, loss1 = sensitivity.diagonal_fisher(model, win, sample_labels=True, seed=1)
    f2, loss2 = sensitivity.diagonal_fisher(model, win, sample_labels=True, seed=1)
    f3, _ = sensitivity.diagonal_fisher(model, win, sample_labels=True, seed=2)
    emp, loss = sensitivity.diagonal_fisher(model, win)
    assert all(p.grad is None for p in model.parameters())
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(f1[name], f2[name]) and not torch.equal(f1[name], f3[name])
    assert not torch.equal(f1[name], emp[name])
    assert loss1 == loss2 == pytest.approx(loss, rel=1e-5)  # the text's loss, whatever the labels


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(("extra", "needle"), [
    (["--target-sqnr", "30"], "does not combine with --target-sqnr"),
    (["--bits-per-param", "4"], "does not combine with --bits-per-param"),
    (["--quant", "step:8"], "does not combine with --quant step:8"),
    (["--lossless"], "does not combine with --lossless"),
    (["--rdoq"], "does not combine with --rdoq"),
])
def test_max_kl_refuses_other_targets(lm, tmp_path: Path, extra: list[str], needle: str) -> None:
    folder, calib, _ = lm
    res = run("pack", str(folder), "-o", str(tmp_path / "x.ggz"), "--max-kl", "0.01", "--calibration",
              str(calib), *extra)
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if "rror" in ln] == [ln for ln in res.output.splitlines()
                                                                        if needle in ln]
    assert not (tmp_path / "x.ggz").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--max-kl", "0", "--calibration", "CALIB"], "not a positive number"),
    (["--max-kl", "-0.5", "--calibration", "CALIB"], "not a positive number"),
    (["--max-kl", "nan", "--calibration", "CALIB"], "not a positive number"),
    (["--max-kl", "0.01"], "--max-kl needs --calibration TEXT"),
    (["--max-kl", "0.01", "--calibration", "NOFILE"], "does not exist"),
    (["--calibration", "CALIB"], "give --max-kl K too"),
])
def test_max_kl_usage_errors(lm, tmp_path: Path, args: list[str], needle: str) -> None:
    folder, calib, _ = lm
    args = [str(calib) if a == "CALIB" else str(tmp_path / "none.txt") if a == "NOFILE" else a for a in args]
    res = run("pack", str(folder), "-o", str(tmp_path / "x.ggz"), *args)
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output
    assert sum("Error:" in ln for ln in res.output.splitlines()) == 1
    assert not (tmp_path / "x.ggz").exists()


def test_max_kl_refuses_models_that_cannot_run(lm, tmp_path: Path) -> None:
    folder, calib, _ = lm
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (enc / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("model.safetensors", "config.json"):
        (notok / f).write_bytes((folder / f).read_bytes())
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "w.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    for src, needle in ((enc, "not a causal language model"), (notok, "no tokenizer files"),
                        (bare / "w.safetensors", "needs its HF folder")):
        res = run("pack", str(src), "-o", str(tmp_path / "x.ggz"), "--max-kl", "0.01", "--calibration",
                  str(calib))
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1
        assert lines[0].startswith("error: ") and needle in lines[0]
        assert not (tmp_path / "x.ggz").exists()
    # and the library refuses what the CLI refuses
    with pytest.raises(GGError, match="needs --calibration"):
        P.PackOptions(max_kl=0.01).checked()
    with pytest.raises(GGError, match="alternative targets"):
        P.PackOptions(max_kl=0.01, calibration=str(calib), target_sqnr_db=30).checked()
    with pytest.raises(GGError, match="positive"):
        P.PackOptions(max_kl=math.inf, calibration=str(calib)).checked()


def test_cli_prints_the_search_and_json_has_it(lm, tmp_path: Path) -> None:
    folder, calib, _ = lm
    out = tmp_path / "c.ggz"
    res = CliRunner().invoke(cli, ["pack", str(folder), "-o", str(out), "--max-kl", "0.01", "--calib",
                                   str(calib), "--calib-windows", "2", "--calib-length", "64"])
    assert res.exit_code == 0, res.output
    assert "KL search: fisher-weighted allocation, max KL 0.01 nats" in res.stderr
    assert "held-out" in res.stderr and "per-tensor steps for KL ≤ 0.01 nats" in res.stderr
    res = CliRunner().invoke(cli, ["pack", str(folder), "-o", str(out), "--force", "--json", "--max-kl",
                                   "0.01", "--calibration", str(calib), "--calibration-windows", "2",
                                   "--calibration-length", "64", "--fail-if", "kl_mean>0.01"])
    assert res.exit_code == 0, res.output
    ck = json.loads(res.stdout)["checkpoints"][0]
    assert np.isfinite(ck["allocation"]["measured_kl"]) and ck["allocation"]["measured_kl"] <= 0.01


def test_row_steps_meet_the_kl_and_restore_each_row_at_its_step(lm, tmp_path: Path) -> None:
    """--max-kl --step-granularity row: the .ggz's own KL (computed here from its restored weights) is
    within the target, every row restores as round(w / step_r) · step_r with the stored step code."""
    folder, calib, text = lm
    out = tmp_path / "rows.ggz"
    doc = P.pack(folder, out, P.PackOptions(max_kl=0.01, calibration=str(calib), coder="rans",
                                            step_granularity="row", **CAL))
    ck = doc["checkpoints"][0]
    a = ck["allocation"]
    assert ck["quantization"] == {"method": "steps", "granularity": "row", "max_kl": 0.01}
    assert a["method"] == "fisher-rows" and a["granularity"] == "row" and a["measured_kl"] <= 0.01
    packed = P.open_packed(out)
    assert packed.header["format_version"] == 3
    blob = out.read_bytes()
    source = {i.name: x for i, x in open_checkpoint(folder).iter_tensors()}
    restored = dict(P.read_packed(out))
    rowed = [t for t in packed.tensors if "row_steps" in t]
    assert rowed and {t["name"] for t in rowed} == set(a["steps"])
    distinct = set()
    for t in rowed:
        at = packed.data_start + t["offset"] + t["row_steps"]["offset"]
        s_rows = np.frombuffer(blob[at:at + t["row_steps"]["length"]], dtype=np.int8)
        x = source[t["name"]]
        m = x.reshape(x.shape[0], -1).to(torch.float64)
        steps = [2.0 ** -(int(k) / 4) for k in s_rows]  # step codes are quarter octaves
        want = torch.stack([torch.round(m[r] / st) * st for r, st in enumerate(steps)])
        assert torch.equal(restored[t["name"]], want.to(x.dtype).reshape(x.shape)), t["name"]
        distinct |= set(s_rows.tolist())
    assert len(distinct) > 1
    # the KL of the container's weights, measured here in float64
    base = load_model(folder, dtype="float32")
    _, held = klalloc.split_windows(base.tokenizer, text, CAL["calibration_windows"],
                                    CAL["calibration_length"])
    with torch.inference_mode():
        base_logits = base.model(input_ids=held).logits[:, :-1]
        logits = load_model(out, dtype="float32").model(input_ids=held).logits[:, :-1]
    kl = float(kl_float64(base_logits, logits).mean())
    assert kl <= 0.01 and a["measured_kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)


def test_max_kl_with_trellis_measures_the_trellis_values_and_saves_bits(lm, packed, tmp_path: Path) -> None:
    """The KL search runs on the trellis-coded values themselves (the probe restores each step as the
    container will), so the unpacked model's KL is the measured one, within the target, in fewer bits."""
    folder, calib, text = lm
    k = 0.01
    path = tmp_path / "t.ggz"
    doc = P.pack(folder, path, P.PackOptions(max_kl=k, calibration=str(calib), coder="rans", trellis=True,
                                             **CAL))["checkpoints"][0]
    base = load_model(folder, dtype="float32")
    _, held = klalloc.split_windows(base.tokenizer, text, CAL["calibration_windows"],
                                    CAL["calibration_length"])
    restored = load_model(path, dtype="float32")
    with torch.inference_mode():
        kl = float(kl_float64(base.model(input_ids=held).logits[:, :-1],
                              restored.model(input_ids=held).logits[:, :-1]).mean())
    a = doc["allocation"]
    assert a["measured_kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12) and kl <= k
    coded = [t for t in doc["tensors"] if t["encoding"] == "trellis"]
    assert doc["quantization"] == {"method": "steps", "max_kl": k, "trellis": len(coded),
                                   "trellis_lambda": T.KL_LAMBDA} and coded
    assert doc["summary"]["coded_bits_per_param"] < packed[k][1]["summary"]["coded_bits_per_param"]
    with pytest.raises(GGError, match="does not combine with --step-granularity row"):
        P.PackOptions(max_kl=k, calibration=str(calib), trellis=True, step_granularity="row").checked()

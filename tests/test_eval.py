"""`ggcompress eval`: lm-eval on in-memory models, next-token KL vs a baseline, gates, loading errors.

A tiny Llama (hidden 32, 2 layers) with a byte-level BPE trained in-process on the Wikipedia
fixture text is trained for a few steps (so it is better than uniform), saved as an HF folder, and
a copy with weight noise is the "compressed" model. No downloads beyond the text fixture.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.special import log_softmax as sp_log_softmax
from scipy.special import rel_entr

from ggcompress import fixtures
from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.integrations.evaluation import (
    SCHEMA,
    EvalOptions,
    compare_logits,
    evaluate,
    next_token_logits,
    recovery,
    text_windows,
)
from ggcompress.integrations.tasks import TASK_DIR, documents
from ggcompress.integrations.tasks.cloze import make_items
from ggcompress.io.loading import load_model
from ggcompress.reports.gates import Gate, check_gates, gate_from_bound, parse_gate

VOCAB = 512


# ---------------------------------------------------------------------------------------------- fixtures



@pytest.fixture(scope="module")
def texts() -> tuple[str, str]:
    train, validation = fixtures.text()
    return train.read_text(encoding="utf-8"), validation.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def eval_text(texts, tmp_path_factory) -> Path:
    """The first lines (title + two paragraphs) of each validation article: 8 real documents."""
    docs = ["\n".join(d.splitlines()[:3]) for d in documents(texts[1])]
    path = tmp_path_factory.mktemp("text") / "val.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(texts, tmp_path_factory) -> dict[str, Path]:
    """base: tiny Llama trained briefly on real text; noisy: base + weight noise; bert: an encoder."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("models")
    train = texts[0][:200_000]
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([train], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    end = "<|endoftext|>"
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    ids = torch.tensor(hf_tok(train[:60_000])["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=g)
        batch = torch.stack([ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(root / "base")
    hf_tok.save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(root / "noisy")
    hf_tok.save_pretrained(root / "noisy")

    BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(root / "bert")
    hf_tok.save_pretrained(root / "bert")
    shutil.copytree(root / "base", root / "no_tokenizer",
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    return {name: root / name for name in ("base", "noisy", "bert", "no_tokenizer")}


@pytest.fixture(scope="module")
def report(models, eval_text, tmp_path_factory) -> dict:
    """One library run: baseline, the baseline again, the noisy copy; from an unrelated directory to
    show the shipped tasks do not depend on the working directory."""
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        return evaluate([str(models["base"]), str(models["base"]), str(models["noisy"])],
                        EvalOptions(text=eval_text, limit=4, batch_size=4, max_tokens=2048, window=128))
    finally:
        os.chdir(cwd)


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["eval", *args])


# ---------------------------------------------------------------------------------------------- acceptance


def test_baseline_against_itself_is_exact(report) -> None:
    base, again = report["models"][0], report["models"][1]
    assert again["tasks"].keys() == {"ggc_perplexity", "ggc_cloze"}
    for task, entry in again["tasks"].items():
        assert entry["samples"] == 4
        for name, metric in entry["metrics"].items():
            assert metric["value"] == base["tasks"][task]["metrics"][name]["value"]
            assert metric["recovery"] == 1.0, (task, name)
    text = again["text"]
    assert (text["kl_mean"], text["kl_median"], text["kl_p99"], text["kl_max"]) == (0.0, 0.0, 0.0, 0.0)
    assert text["same_top1"] == 1.0 and text["ppl_ratio"] == 1.0 and text["recovery"] == 1.0
    assert again["recovery"] == 1.0 and again["recovery_mean"] == 1.0
    assert base["baseline"] and not again["baseline"]
    assert report["passed"]


def test_noisy_copy_loses_quality_and_the_instrument_sees_it(report) -> None:
    noisy = report["models"][2]
    text = noisy["text"]
    assert text["kl_mean"] > 0 and text["kl_max"] >= text["kl_p99"] >= text["kl_median"] >= 0
    assert text["same_top1"] < 1 and text["ppl_ratio"] > 1
    assert text["recovery"] == pytest.approx(1 / text["ppl_ratio"], rel=1e-12)
    ppl = noisy["tasks"]["ggc_perplexity"]["metrics"]
    for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ppl[name]["higher_is_better"] is False
        assert 0 < ppl[name]["recovery"] < 1, name
    assert noisy["recovery"] < 1
    assert noisy["recovery"] == min(v for k, v in noisy["metrics"].items()
                                    if k.startswith("recovery:") and v is not None)
    # the baseline was trained: better than a uniform guess over the vocabulary
    assert report["models"][0]["text"]["ppl"] < VOCAB / 2


def test_report_is_json_with_a_stable_schema(report) -> None:
    doc = json.loads(json.dumps(report, allow_nan=False))
    assert doc["schema"] == SCHEMA == "ggcompress.eval/1"
    assert doc["config"]["tasks"] == ["ggc_perplexity", "ggc_cloze"]
    assert doc["text"]["window"] == 128 and doc["text"]["tokens"] == doc["text"]["windows"] * 127
    row = doc["models"][2]
    assert {"model", "label", "source", "kind", "baseline", "seconds", "tasks", "text", "recovery",
            "recovery_mean", "metrics", "failed_gates"} <= row.keys()
    assert row["kind"] == "hf" and [m["label"] for m in doc["models"]] == ["base#1", "base#2", "noisy"]
    flat = row["metrics"]
    assert flat["ggc_cloze/acc"] == row["tasks"]["ggc_cloze"]["metrics"]["acc"]["value"]
    assert flat["recovery:ggc_perplexity/bits_per_byte"] == (
        row["tasks"]["ggc_perplexity"]["metrics"]["bits_per_byte"]["recovery"])
    assert flat["kl_mean"] == row["text"]["kl_mean"]


# ---------------------------------------------------------------------------------------------- numerics


def test_compare_logits_matches_scipy_in_float64() -> None:
    g = torch.Generator().manual_seed(1)
    base = 3 * torch.randn(37, 50, generator=g)
    model = base + torch.randn(37, 50, generator=g)
    base[0, :5] = -math.inf  # masked vocabulary entries: p=0 contributes nothing
    targets = torch.randint(5, 50, (37,), generator=g)
    out = compare_logits(base, model, targets)
    lp = sp_log_softmax(base.double().numpy(), axis=-1)
    lq = sp_log_softmax(model.double().numpy(), axis=-1)
    kl = rel_entr(np.exp(lp), np.exp(lq)).sum(-1)
    # both sides are float64 from the same float32 logits: agreement to rounding (~1e-15 relative)
    np.testing.assert_allclose(out["kl"].numpy(), kl, rtol=1e-10, atol=1e-13)
    rows = np.arange(37)
    np.testing.assert_allclose(out["nll_base"].numpy(), -lp[rows, targets.numpy()], rtol=1e-12)
    np.testing.assert_allclose(out["nll_model"].numpy(), -lq[rows, targets.numpy()], rtol=1e-12)
    np.testing.assert_array_equal(out["same_top1"].numpy(), lp.argmax(-1) == lq.argmax(-1))
    same = compare_logits(base, base.clone(), targets)
    assert torch.all(same["kl"] == 0) and torch.all(same["same_top1"])


def test_own_perplexity_matches_the_models_own_loss(models, eval_text) -> None:
    loaded = load_model(models["noisy"])
    windows = text_windows(loaded.tokenizer, eval_text.read_text(), max_tokens=1024, window=64)
    nll = []
    for start, logits in next_token_logits(loaded.model, windows, batch_size=3):
        for j in range(logits.shape[0]):
            nll.append(compare_logits(logits[j], logits[j], windows[start + j, 1:])["nll_model"])
    ours = math.exp(torch.cat(nll).mean().item())
    with torch.no_grad():  # transformers' float32 cross-entropy; windows all have 63 targets
        loss = torch.stack([loaded.model(input_ids=w[None], labels=w[None]).loss for w in windows]).mean()
    assert ours == pytest.approx(math.exp(loss.item()), rel=1e-5)  # float32 loss vs float64 log_softmax


def test_text_windows_are_disjoint_and_spread_over_the_text() -> None:
    class Positions:  # token i of the text is the id i: a window's ids say where it starts
        def __call__(self, text, **_):
            return {"input_ids": list(range(len(text)))}

    w = text_windows(Positions(), "x" * 1000, max_tokens=300, window=100)
    # 10 whole windows available, 3 wanted: numpy linspace(0, 9, 3) rounds to windows 0, 4, 9
    assert torch.equal(w, torch.stack([torch.arange(s, s + 100) for s in (0, 400, 900)]))
    assert torch.equal(text_windows(Positions(), "abcdef", max_tokens=300, window=100), torch.arange(6)[None])
    with pytest.raises(GGError, match="fewer than 2 tokens"):
        text_windows(Positions(), "a", max_tokens=300, window=100)


def test_recovery_direction_and_undefined_cases() -> None:
    assert recovery(0.45, 0.5, True) == pytest.approx(0.9)
    assert recovery(11.0, 10.0, False) == pytest.approx(10 / 11)
    assert recovery(1.0, 0.0, True) is None and recovery(0.0, 1.0, False) is None
    assert recovery(1.0, 1.0, None) is None and recovery(None, 1.0, True) is None


# ---------------------------------------------------------------------------------------------- tasks


def test_cloze_items_are_real_text_and_deterministic(texts) -> None:
    validation = texts[1]
    items = make_items(validation, n=60, seed=3)
    assert items == make_items(validation, n=60, seed=3) and len(items) == 60
    flat = " ".join(validation.split())
    docs = [" ".join(d.split()) for d in documents(validation)]
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        true = it["choices"][it["label"]]
        assert f"{it['context']} {true}" in docs[it["doc"]]  # context + true ending = the real sentence(s)
        for k, choice in enumerate(it["choices"]):
            assert choice in flat
            if k != it["label"]:
                assert choice not in docs[it["doc"]]  # distractors come from other articles
    assert {it["label"] for it in items} == {0, 1, 2, 3}


def test_shipped_cloze_file_is_the_generator_output_on_the_fixture_text(texts) -> None:
    shipped = [json.loads(line) for line in (TASK_DIR / "ggc_cloze.jsonl").read_text().splitlines()]
    assert shipped == make_items(texts[1], n=300, seed=0)


# ---------------------------------------------------------------------------------------------- gates


def test_gate_parsing_and_checking() -> None:
    assert parse_gate("kl_mean>0.05") == Gate("kl_mean", ">", 0.05)
    assert parse_gate(" recovery:ggc_cloze/acc <= 99% ") == Gate("recovery:ggc_cloze/acc", "<=", 0.99)
    assert parse_gate("ppl_ratio>=1.02") == Gate("ppl_ratio", ">=", 1.02)
    assert gate_from_bound("recovery=0.99", "under") == Gate("recovery", "<", 0.99)
    assert gate_from_bound("kl_mean=5e-2", "over") == Gate("kl_mean", ">", 0.05)
    for bad in ("kl_mean", "kl_mean>>1", ">1", "kl_mean>x", "a=1"):
        with pytest.raises(GGError, match="bad gate"):
            parse_gate(bad)
    gates = [parse_gate("kl_mean>0.05"), parse_gate("recovery<0.99"), parse_gate("typo>1")]
    assert check_gates({"kl_mean": 0.05, "recovery": 0.99, "typo": 0.5}, gates) == []  # bounds are strict
    failures = check_gates({"kl_mean": 0.06, "recovery": float("nan")}, gates)
    assert [(f.gate.metric, f.value is None) for f in failures] == [("kl_mean", False), ("recovery", False),
                                                                    ("typo", True)]
    assert "not reported" in failures[2].reason


# ---------------------------------------------------------------------------------------------- loading


def test_loading_errors_are_one_clear_line(models, tmp_path) -> None:
    with pytest.raises(GGError, match="no such file or folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(GGError, match=r"not a causal language model \(BertModel\)"):
        load_model(models["bert"])
    with pytest.raises(GGError, match="no tokenizer files"):
        load_model(models["no_tokenizer"])
    with pytest.raises(GGError, match="HF_HUB_OFFLINE"):
        load_model("ggcompress-test/not-cached")
    with pytest.raises(GGError, match="bare weights file"):
        load_model(models["base"] / "model.safetensors")


def test_hub_id_loads_from_the_local_cache(models) -> None:
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--ggcompress-test--tiny"
    commit = "0" * 40
    shutil.copytree(models["base"], repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    loaded = load_model("ggcompress-test/tiny")
    assert loaded.kind == "hf" and Path(loaded.source) == repo / "snapshots" / commit
    ref = load_model(models["base"])
    ours, theirs = loaded.model.state_dict(), ref.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_json_markdown_and_passing_gate(models, eval_text, tmp_path) -> None:
    md = tmp_path / "report.md"
    r = _invoke(str(models["base"]), str(models["base"]), "--text", str(eval_text), "--tasks", "none",
                "--max-tokens", "512", "--window", "128", "--json", "--markdown", str(md),
                "--fail-if", "kl_mean>0", "--fail-under", "recovery=1", "--fail-over", "ppl_ratio=1")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "ggcompress.eval/1" and doc["passed"] and doc["config"]["tasks"] == []
    assert doc["gates"] == ["kl_mean>0", "recovery<1", "ppl_ratio>1"]
    assert doc["models"][1]["text"]["kl_max"] == 0.0
    assert "KL mean" in r.stderr and "same top-1" in r.stderr  # the table goes to stderr
    table = md.read_text()
    assert table.startswith("| metric | base#1 (baseline) | base#2 |")
    assert "| same top-1 ↑ | 100.00% | 100.00% |" in table
    again = _invoke(str(models["base"]), "--text", str(eval_text), "--tasks", "none", "--markdown", str(md))
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_cli_gate_breaks_exit_1_after_the_report(models, eval_text) -> None:
    r = _invoke(str(models["base"]), str(models["noisy"]), "--text", str(eval_text), "--tasks", "none",
                "--max-tokens", "512", "--window", "128", "--json", "--fail-if", "kl_mean>0.0001",
                "--fail-under", "recovery=0.99", "--fail-if", "no_task/acc>1")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)  # the full report still comes out
    # a TASK/METRIC name is known only once the tasks ran: missing, it fails the gate after the report
    assert not doc["passed"] and doc["models"][0]["failed_gates"][0]["metric"] == "no_task/acc"
    failed = [f["gate"] for f in doc["models"][1]["failed_gates"]]
    assert failed == ["kl_mean>0.0001", "no_task/acc>1", "recovery<0.99"]
    assert "FAIL noisy: kl_mean=" in r.stderr and "metrics available to gates" in r.stderr


def test_cli_include_path_runs_a_users_task(models, tmp_path) -> None:
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    data = tasks / "mc.jsonl"
    shutil.copy(TASK_DIR / "ggc_cloze.jsonl", data)
    yaml_text = (TASK_DIR / "ggc_cloze.yaml").read_text().replace("task: ggc_cloze", "task: my_cloze")
    (tasks / "my_cloze.yaml").write_text(yaml_text.replace("test: ggc_cloze.jsonl", f"test: {data}"))
    r = _invoke(str(models["base"]), "--include-path", str(tasks), "--tasks", "my_cloze", "--limit", "3",
                "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["models"][0]["tasks"]["my_cloze"]["samples"] == 3
    assert doc["text"] is None and doc["models"][0]["text"] is None


def test_cli_errors(models, eval_text, tmp_path) -> None:
    remote = tmp_path / "remote_tasks"
    remote.mkdir()
    (remote / "needs_hub.yaml").write_text(
        "task: needs_hub\ndataset_path: ggcompress-test/no-such-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: c\ndoc_to_target: 0\n")
    cases = [
        ((str(models["base"]), "--tasks", "needs_hub", "--include-path", str(remote)),
         "task needs_hub: cannot load its data (Couldn't reach"),
        ((str(models["bert"]), "--text", str(eval_text), "--tasks", "none"), "not a causal language model"),
        ((str(models["no_tokenizer"]), "--tasks", "ggc_cloze"), "no tokenizer files"),
        ((str(tmp_path / "nope"), "--tasks", "ggc_cloze"), "no such file or folder"),
        ((str(models["base"]), "--tasks", "ggc_perplexity"), "needs --text FILE"),
        ((str(models["base"]), "--tasks", "none", "--fail-if", "kl_mean>0.1"), "nothing to do"),
        ((str(models["base"]), "--fail-if", "kl_mean>0.1"), "gate kl_mean>0.1 needs --text"),
        ((str(models["base"]), "--text", str(tmp_path / "nope.txt"), "--tasks", "none"), "no such text file"),
    ]
    for args, message in cases:
        r = _invoke(*args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        # one error line, no traceback; progress lines (stderr is not a terminal here) may precede it
        assert r.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr
        if "needs_hub" in args:
            assert "needs a download while offline" in r.stderr
    r = _invoke(str(models["base"]), "--fail-if", "kl_mean=0.1")  # a usage error, before loading anything
    assert r.exit_code == 2 and "bad gate" in r.stderr


def test_cli_unknown_task(models) -> None:
    r = _invoke(str(models["base"]), "--tasks", "no_such_task_anywhere")
    assert r.exit_code == 1 and "unknown task 'no_such_task_anywhere'" in r.stderr


# ------------------------------------------------------------------------------------------- lm-eval options


def test_cli_passes_lm_eval_options_through(models, tmp_path) -> None:
    out = tmp_path / "results"
    r = _invoke(str(models["base"]), "--tasks", "ggc_cloze", "--limit", "3", "--num-fewshot", "2",
                "--batch-size", "auto", "--output-path", str(out), "--log-samples", "--seed", "3",
                "--model-args", "add_bos_token=True", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["config"]["num_fewshot"] == 2 and doc["config"]["batch_size"] == "auto"
    [results] = list((out / "base").glob("results_*.json"))  # lm-eval's own layout: <dir>/<model>/
    saved = json.loads(results.read_text())
    assert saved["n-shot"]["ggc_cloze"] == 2 and saved["config"]["random_seed"] == 3
    ours = doc["models"][0]["tasks"]["ggc_cloze"]["metrics"]["acc"]["value"]
    assert saved["results"]["ggc_cloze"]["acc,none"] == ours
    [samples] = list((out / "base").glob("samples_ggc_cloze_*.jsonl"))
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(records) == 3
    # two few-shot examples (context + answer each, blank-line separated) precede the item's own context
    parts = records[0]["arguments"]["gen_args_0"]["arg_0"].split("\n\n")
    assert len(parts) == 3 and parts[-1] == records[0]["doc"]["context"], parts
    # stderr is not a terminal under CliRunner: plain progress lines, one per phase
    lines = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert any(line.endswith("base: loading") for line in lines), r.stderr
    assert any("base: lm-eval tokens" in line for line in lines), r.stderr


def test_cli_lm_eval_option_errors(models, tmp_path) -> None:
    base = str(models["base"])
    cases = [
        ((base, "--log-samples"), "--log-samples writes lm-eval's per-sample records under --output-path"),
        ((base, "--model-args", "pretrained=gpt2"), "ggcompress loads the model itself; use MODEL"),
        ((base, "--model-args", "dtype=float16"), "use --dtype instead"),
        ((base, "--fewshot-as-multiturn"), "needs --apply-chat-template"),
    ]
    for args, message in cases:
        r = _invoke(*args)
        assert r.exit_code == 1 and message in r.stderr, (args, r.stderr)
    for args in ((base, "--batch-size", "0"), (base, "--batch-size", "big"), (base, "--num-fewshot", "-1")):
        assert _invoke(*args).exit_code == 2, args


def test_progress_lines_one_per_phase_then_tenths() -> None:
    from ggcompress.cli.eval import ProgressLines

    p = ProgressLines()
    got = [p.line("a", d, 20) for d in range(21)]
    shown = [d for d, line in enumerate(got) if line is not None]
    assert shown == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # the phase line, then every tenth
    unknown = [p.line("b", n, None) for n in (0, 10, 999, 1000, 3999, 4000, 16000)]
    assert [x is not None for x in unknown] == [True, False, False, True, False, True, True]
    assert unknown[0].endswith("] b") and unknown[3].endswith("b: 1,000")


def test_cli_apply_chat_template_wraps_prompts(models, tmp_path) -> None:
    chat = tmp_path / "chat"
    shutil.copytree(models["base"], chat)
    (chat / "chat_template.jinja").write_text(
        "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}<</{{ m['role'] }}>>{% endfor %}"
        "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    out = tmp_path / "results"
    r = _invoke(str(chat), "--tasks", "ggc_cloze", "--limit", "1", "--apply-chat-template",
                "--system-instruction", "Pick the ending.", "--output-path", str(out), "--log-samples")
    assert r.exit_code == 0, r.stderr
    [samples] = list((out / "chat").glob("samples_ggc_cloze_*.jsonl"))
    prompt = json.loads(samples.read_text().splitlines()[0])["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<<system>>Pick the ending.<</system>><<user>>"), prompt

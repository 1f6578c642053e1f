"""benchmarks/reproduce_claims.py without training: the run cache (resume, shards, --cached), the verdict
rules that turn measured rows into "confirmed / partly / not reproduced", and the docs section writer.

The training itself is exercised by the smoke budget (benchmarks, not CI); these rules decide what the
docs claim, so they are pinned here on hand-made rows whose verdicts are worked out in the comments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import reproduce_claims as rc  # noqa: E402


def _bs_row(label: str, seed: int, ppl: float, eg0: float, lam: float = 0.0) -> dict:
    return {"label": label, "seed": seed, "lam_over_n": lam, "val": {"ppl": ppl}, "2^-8": {"eg0": eg0}}


def test_runner_caches_resumes_and_shards(tmp_path):
    calls: list[str] = []

    def work(tag: str):
        return lambda: calls.append(tag) or {"tag": tag, "t": (1, 2)}

    sizes = {"steps": 10}
    r = rc.Runner(tmp_path / "cache")
    assert r.unit("a β=1 xi/fan", sizes, work("a")) == {"tag": "a", "t": [1, 2]}  # JSON types, as a hit
    assert r.path("a β=1 xi/fan").name == "a_beta=1_xi_fan.json"
    again = rc.Runner(tmp_path / "cache")
    assert again.unit("a β=1 xi/fan", sizes, work("a2")) == {"tag": "a", "t": [1, 2]}
    assert calls == ["a"]  # the second runner resumed from the cache
    assert again.unit("a β=1 xi/fan", {"steps": 11}, work("a3"))["tag"] == "a3"  # other sizes: rerun
    # shard 1/2 owns the odd units only; the others come back None and are listed as missing
    sh = rc.Runner(tmp_path / "s", shard=(1, 2))
    got = [sh.unit(f"u{i}", sizes, work(f"u{i}")) for i in range(4)]
    assert [g is not None for g in got] == [False, True, False, True] and sh.missing == ["u0", "u2"]
    cached = rc.Runner(tmp_path / "s", cached_only=True)
    assert [cached.unit(f"u{i}", sizes, work("never")) is not None for i in range(4)] == [False, True, False,
                                                                                          True]
    assert "never" not in calls and not list((tmp_path / "s").glob(".*.tmp"))


def test_backslash_verdict_takes_the_best_saving_within_one_percent_of_its_seeds_plain():
    rows = [_bs_row("plain", 0, 100.0, 8.0), _bs_row("plain", 1, 110.0, 8.0),
            _bs_row("loss", 0, 100.9, 6.0, 3e-4),  # +0.9% ppl, saves 25%: eligible
            _bs_row("loss", 1, 111.5, 2.0, 3e-3),  # +1.4% ppl vs its own seed's plain: not eligible
            _bs_row("decoupled", 0, 99.0, 7.0, 3e-5),  # better ppl, saves 12.5%
            _bs_row("decoupled", 2, 50.0, 1.0, 3e-3)]  # its seed's plain is not done yet: skipped
    best = rc.backslash_verdict(rows)
    assert best["label"] == "loss" and best["saving"] == pytest.approx(0.25) and best["seed"] == 0
    assert best["d_ppl"] == pytest.approx(0.009)
    assert rc.backslash_verdict([rows[0], _bs_row("loss", 0, 103.0, 1.0)])["label"].startswith("none")


def _doc(saving: float, ds_red: float, ds_ppl: float, init_steps: tuple[int, int]) -> dict:
    gg, ref = init_steps  # steps to target: best β<2 vs β=2, both variance rules alike
    runs = {}
    for rule in ("std0.02", "xi/fan"):
        # the target is the worst median final loss (β=2's 4.9); β=1 reaches it at step `gg`, β=2 at `ref`
        runs[f"β=2 {rule}"] = [{"seed": s, "curve": [[0, 9.0], [ref, 4.9], [400, 4.9]]} for s in range(3)]
        runs[f"β=1 {rule}"] = [{"seed": s, "curve": [[0, 9.0], [gg, 4.9], [400, 4.8]]} for s in range(3)]
        runs[f"β measured {rule}"] = [dict(r) for r in runs[f"β=2 {rule}"]]
    return {"budget": "cpu", "schema": rc.SCHEMA,
            "sizes": {"bs_steps": 250, "bs_lams": [3e-4], "bs_seeds": 1, "ft_steps": 500,
                      "ds_sweep": "0.8:0.6", "ds_steps": 200, "minilm_steps": 100, "init_steps": 400,
                      "init_batch": 4, "init_block": 64, "init_seeds": 3, "init_betas": [1.0, 2.0],
                      "notes": ["a note"]},
            "backslash": {"scratch": [_bs_row("plain", 0, 100.0, 10.0),
                                      _bs_row("loss", 0, 100.5, 10.0 * (1 - saving), 3e-4)], "finetune": []},
            "deepshape": {"points": [{"shape_scale": 0.8, "scale_scale": 0.6, "vs_original": {
                "eg_bits_reduction": ds_red, "val_ppl_increase": ds_ppl}}]},
            "init": {"target_loss": 5.0, **rc.summarize_init(runs)}}


@pytest.mark.parametrize(("saving", "word"), [(0.65, "confirmed"), (0.3, "partly"), (0.1, "not reproduced")])
def test_backslash_thresholds(saving, word):
    rows = {r["claim"]: r for r in rc.verdicts(_doc(saving, 0.0, 0.0, (200, 200)))}
    assert rows["BackSlash from scratch"]["verdict"].startswith(word + ":")
    assert "BackSlash fine-tune" not in rows  # no fine-tune row measured: no verdict claimed


@pytest.mark.parametrize(("red", "ppl", "word"), [(0.35, 0.01, "confirmed"), (0.35, 0.05, "not reproduced"),
                                                  (0.10, 0.0, "partly"), (0.04, 0.0, "not reproduced")])
def test_deepshape_counts_only_points_within_two_percent(red, ppl, word):
    rows = {r["claim"]: r for r in rc.verdicts(_doc(0.0, red, ppl, (200, 200)))}
    assert rows["DeepShape (trained LM)"]["verdict"].startswith(word + ":")


@pytest.mark.parametrize(("steps", "word"), [((100, 200), "confirmed"), ((180, 200), "not reproduced")])
def test_init_needs_twenty_percent_fewer_steps(steps, word):
    doc = _doc(0.0, 0.0, 0.0, steps)
    row = {r["claim"]: r for r in rc.verdicts(doc)}["GG init converges faster"]
    assert row["verdict"].startswith(word + ":")
    assert "3–3 seeds per init" in row["setup"] and "4 × 64 tokens" in row["setup"]


def test_steps_to_target_is_interpolated_between_evaluations():
    curve = [[0, 9.0], [200, 6.0], [400, 5.0], [600, 4.0]]
    assert rc.steps_to(curve, 5.5) == pytest.approx(300.0)  # halfway between the evaluations at 200 and 400
    assert rc.steps_to(curve, 5.0) == 400.0 and rc.steps_to(curve, 9.5) == 0.0
    assert rc.steps_to(curve, 3.0) is None


def test_init_with_missing_seeds_claims_no_verdict():
    doc = _doc(0.0, 0.0, 0.0, (100, 200))
    runs = {label: [{"seed": 0, "curve": [[0, 9.0], [200, 4.9]]}] for label in doc["init"]["summary"]}
    doc["init"] = {"target_loss": 4.9, **rc.summarize_init(runs)}
    row = {r["claim"]: r for r in rc.verdicts(doc)}["GG init converges faster"]
    assert row["verdict"] == "incomplete (6 of 18 runs): no verdict yet"


def test_backslash_tradeoffs_are_medians_against_each_seeds_plain():
    rows = [_bs_row("plain", 0, 100.0, 8.0), _bs_row("plain", 1, 200.0, 10.0),
            _bs_row("loss", 0, 110.0, 4.0, 3e-4), _bs_row("loss", 1, 240.0, 4.0, 3e-4)]
    # medians of (−50%, −60%) bits and (+10%, +20%) perplexity
    assert rc.backslash_tradeoffs(rows) == "loss 0.0003: -55.0% bits, +15.0% ppl"


def test_smoke_budget_never_claims_a_verdict():
    doc = {**_doc(0.9, 0.9, 0.0, (10, 200)), "budget": "smoke"}
    assert all(r["verdict"].startswith("smoke run") for r in rc.verdicts(doc))


def test_section_replaces_only_its_own_markers_and_legacy_json_merges(tmp_path):
    md = tmp_path / "benchmarks.md"
    other = rc.BEGIN.format(budget="smoke") + "\nsmoke text\n" + rc.END.format(budget="smoke")
    cpu = f"{rc.BEGIN.format(budget='cpu')}\nold\n{rc.END.format(budget='cpu')}"
    md.write_text(f"# head\n\n{other}\n\n{cpu}\ntail\n")
    doc = {**_doc(0.65, 0.0, 0.0, (200, 200)), "date": "today", "only": ["backslash"],
           "meta": {"backslash": {"command": "cmd", "date": "d", "cpu_seconds": 12.0, "machine": "m",
                                  "missing": ["backslash-finetune-x"]}}}
    doc["verdicts"] = rc.verdicts(doc)
    rc.write_section(md, rc.render(doc), "cpu")
    text = md.read_text()
    assert "old" not in text and other in text and text.startswith("# head") and text.endswith("tail\n")
    assert "| BackSlash from scratch |" in text and "1 unit(s) not run yet" in text
    # a claims.json written before per-experiment metadata is merged, not dropped
    legacy = tmp_path / "claims.json"
    legacy.write_text(json.dumps({"schema": rc.SCHEMA, "budget": "cpu", "only": ["minilm"], "command": "c",
                                  "date": "d", "seconds": 1, "cpu_seconds": 2, "machine": "m", "minilm": {}}))
    assert rc.load_doc(legacy, "cpu")["meta"]["minilm"]["command"] == "c"
    assert rc.load_doc(legacy, "gpu") == {}

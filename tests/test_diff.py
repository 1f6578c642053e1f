"""`ggcompress diff` (regressions between two reports) and the --fail-if gates of analyze."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggcompress.cli import cli
from ggcompress.errors import GGError
from ggcompress.reports.diff import Tolerance, compare, parse_tolerance


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def pack_doc(ratio: float = 4.0, bits: float = 4.0, sqnr: float = 30.0, seconds: float = 1.0) -> dict:
    return {"schema": "ggcompress.pack/1", "checkpoints": [{"source": "m/", "summary": {
        "ratio": ratio, "bits_per_param": bits, "sqnr_db": sqnr, "seconds": seconds, "params": 100,
        "mb_per_s": 50.0 / seconds}}]}


def eval_doc(acc: float, kl: float) -> dict:
    def model(label: str, a: float, k: float) -> dict:
        return {"label": label,
                "tasks": {"cloze": {"metrics": {"acc": {"value": a, "higher_is_better": True},
                                                "n": {"value": 10, "higher_is_better": None}}}},
                "metrics": {"cloze/acc": a, "cloze/n": 10, "kl_mean": k, "recovery": a / 0.8}}
    return {"schema": "ggcompress.eval/1", "models": [model("base", 0.8, 0.0), model("q8", acc, kl)]}


def statuses(doc: dict) -> dict[tuple[str, str], str]:
    return {(c["row"], c["metric"]): c["status"] for c in doc["changes"]}


def test_pack_directions_and_tolerance() -> None:
    old = pack_doc()
    worse = compare(old, pack_doc(ratio=3.9, bits=4.1, sqnr=29.0, seconds=9.0), Tolerance(relative=0.01))
    s = statuses(worse)
    assert s[("m/", "ratio")] == s[("m/", "bits_per_param")] == s[("m/", "sqnr_db")] == "regression"
    assert s[("m/", "seconds")] == s[("m/", "mb_per_s")] == "changed"  # timings never fail
    assert s[("m/", "params")] == "same" and worse["regressions"] == 3 and not worse["passed"]
    better = compare(old, pack_doc(ratio=4.5, bits=3.5, sqnr=31.0))
    assert better["passed"] and better["improvements"] == 3
    slack = compare(old, pack_doc(ratio=3.97), parse_tolerance("1%"))
    assert statuses(slack)[("m/", "ratio")] == "within tolerance" and slack["passed"]
    assert not compare(old, pack_doc(ratio=3.97), parse_tolerance("0.5%"))["passed"]
    assert compare(old, pack_doc(sqnr=29.5), parse_tolerance("0.5"))["passed"]  # absolute
    assert not compare(old, pack_doc(sqnr=29.4), parse_tolerance("0.5"))["passed"]


def test_missing_metrics_rows_and_kinds() -> None:
    old, new = pack_doc(), pack_doc()
    del new["checkpoints"][0]["summary"]["sqnr_db"]
    new["checkpoints"][0]["summary"]["new_metric"] = 1.0
    s = statuses(compare(old, new))
    assert s[("m/", "sqnr_db")] == "regression" and s[("m/", "new_metric")] == "added"
    moved = copy.deepcopy(old)
    moved["checkpoints"][0]["source"] = "/ci/m/"
    doc = compare(old, moved)
    assert doc["matched_by"] == "position" and doc["passed"]
    two = copy.deepcopy(old)
    two["checkpoints"].append(two["checkpoints"][0])
    with pytest.raises(GGError, match="different checkpoints"):
        compare(old, two)
    with pytest.raises(GGError, match="cannot compare"):
        compare(old, eval_doc(0.8, 0.0))
    with pytest.raises(GGError, match="tolerance"):
        parse_tolerance("lots")


def test_eval_directions_come_from_the_report() -> None:
    s = statuses(compare(eval_doc(0.75, 0.01), eval_doc(0.7, 0.02)))
    assert s[("q8", "cloze/acc")] == s[("q8", "kl_mean")] == s[("q8", "recovery")] == "regression"
    assert s[("q8", "cloze/n")] == "same" and s[("base", "cloze/acc")] == "same"
    assert compare(eval_doc(0.7, 0.02), eval_doc(0.75, 0.01))["passed"]


def test_analyze_and_quantize_reports() -> None:
    a = {"schema": "ggcompress.analyze/1", "checkpoints": [{"source": "m", "summary": {
        "eg_bits": 4.0, "ratio_eg": 4.0, "beta": 1.2, "skipped": {}}}]}
    b = copy.deepcopy(a)
    b["checkpoints"][0]["summary"].update(eg_bits=4.2, beta=1.0)
    s = statuses(compare(a, b))
    assert s[("m", "eg_bits")] == "regression" and s[("m", "beta")] == "changed"
    q = {"schema": "ggcompress.quantize/1", "checkpoints": [{"source": "m", "totals": {
        "sqnr_db": 28.5, "ratio": 3.9, "max_rel_err": 1.0}}]}
    r = copy.deepcopy(q)
    r["checkpoints"][0]["totals"]["sqnr_db"] = 28.0
    assert statuses(compare(q, r))[("m", "sqnr_db")] == "regression"


def test_cli_exit_codes_and_output(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(pack_doc()))
    new.write_text(json.dumps(pack_doc(ratio=3.0)))
    res = run("diff", str(old), str(new))
    assert res.exit_code == 1 and "FAIL" in res.stderr
    assert "ratio" in res.stderr and "regression" in res.stderr
    res = run("diff", str(old), str(new), "--tolerance", "30%", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["schema"] == "ggcompress.diff/1"
    res = run("diff", str(old), str(new), "--metric", "^bits")
    assert res.exit_code == 0
    (tmp_path / "bad.json").write_text('{"schema": "other/1"}')
    res = run("diff", str(old), str(tmp_path / "bad.json"))
    assert res.exit_code == 1 and "is not a report diff compares" in res.stderr
    res = run("diff", str(old), str(tmp_path / "missing.json"))
    assert res.exit_code == 1 and "cannot read" in res.stderr


def test_real_pack_reports_diff_clean_against_themselves(minilm_dir: Path, tmp_path: Path) -> None:
    args = ["pack", str(minilm_dir), "--quant", "step:6", "--include", r"layer\.0\.attention\.self", "--json"]
    first = run(*args, "-o", str(tmp_path / "a.ggz"))
    second = run(*args, "-o", str(tmp_path / "b.ggz"), "--coder", "rans")
    (tmp_path / "a.json").write_text(first.stdout)
    (tmp_path / "b.json").write_text(second.stdout)
    assert run("diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")).exit_code == 0
    res = run("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json")
    doc = json.loads(res.stdout)
    s = {c["metric"]: c["status"] for c in doc["changes"]}
    assert res.exit_code == 0 and s["ratio"] == "improved" and s["coded_bits_per_param"] == "improved"
    res = run("diff", str(tmp_path / "b.json"), str(tmp_path / "a.json"))
    assert res.exit_code == 1


def test_analyze_fail_if(minilm_dir: Path) -> None:
    args = ["analyze", str(minilm_dir), "--include", r"layer\.0\.output\.dense\.weight", "--summary",
            "--fit", "moments"]
    res = run(*args, "--fail-if", "bits_per_param>20", "--fail-if", "ratio<1")
    assert res.exit_code == 0, res.output
    res = run(*args, "--json", "--fail-if", "eg_bits>2", "--fail-if", "ratio_eg<1")
    assert res.exit_code == 1 and "FAIL" in res.stderr and "eg_bits" in res.stderr
    assert json.loads(res.stdout)["schema"] == "ggcompress.analyze/1"
    res = run(*args, "--fail-if", "typo_metric<1")  # analyze knows its metric names before it runs
    assert res.exit_code == 2 and "unknown metric 'typo_metric'" in res.stderr
    res = run(*args, "--fail-if", "eg_bits")
    assert res.exit_code == 2 and "bad gate" in res.stderr  # usage error (docs/cli.md)


def test_quantize_rf8_fail_if(minilm_dir: Path) -> None:
    args = ["quantize-rf8", str(minilm_dir), "--dry-run", "--summary", "--include", r"layer\.0\.output"]
    assert run(*args, "--fail-if", "sqnr_db<20", "--fail-if", "bits_per_param>8.1").exit_code == 0
    res = run(*args, "--fail-if", "sqnr_db<40")
    assert res.exit_code == 1 and "FAIL" in res.stderr and "breaks sqnr_db<40" in res.stderr

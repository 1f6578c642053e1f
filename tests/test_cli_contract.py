"""The CLI contract of docs/cli.md, checked on every subcommand: common options, exit codes, checks before
any work, empty selections, 80-column tables, stdout/stderr split, umask permissions, output dtype,
no library progress bars, and --help without importing torch.

Real fixtures (MiniLM) where a checkpoint is needed; a tiny random Llama (tests/tinylm.py) for the
training commands.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ggcompress import fixtures
from ggcompress.cli import COMMANDS, cli
from ggcompress.cli._tables import shorten_middle
from ggcompress.io.checkpoint import open_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder  # noqa: E402

#: One attention weight of MiniLM: keeps analyze / quantize / pack runs to a second.
ONE = r"layer\.0\.attention\.self\.query\.weight"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli, list(args))


# ---------------------------------------------------------------------------------------- common options


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_takes_the_common_options(name) -> None:
    res = run(name, "--help")
    assert res.exit_code == 0, res.output
    for flag in ("--quiet", "--threads", "--summary", "--debug"):
        assert flag in res.output, f"{name} lacks {flag}"


def test_common_options_work_after_the_subcommand(minilm_dir) -> None:
    """--quiet: nothing on stderr, data still on stdout; --threads sets torch's threads for the run."""
    try:
        res = run("analyze", str(minilm_dir), "--include", ONE, "--fit", "moments", "--json", "--quiet",
                  "--threads", "2", "--summary", "--debug")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["checkpoints"][0]["summary"]["tensors"] == 1
        assert res.stderr == ""
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    res = run("diff", "a.json", "b.json", "--threads", "0")
    assert res.exit_code == 2 and "--threads" in res.output


def test_tables_go_to_stderr_data_to_stdout(minilm_dir) -> None:
    res = run("analyze", str(minilm_dir), "--include", ONE, "--fit", "moments")
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and "by layer role" in res.stderr
    res = run("analyze", str(minilm_dir), "--include", ONE, "--fit", "moments", "--csv")
    assert res.stdout.startswith("source,") or res.stdout.splitlines()[0].count(",") > 5
    assert "by layer role" not in res.stdout


# ---------------------------------------------------------------------------------- usage errors: exit 2


BAD_REGEX = [
    ("analyze", ["ck", "--include", "("]),
    ("quantize-rf8", ["ck", "-o", "{out}", "--exclude", "[a-"]),
    ("pack", ["ck", "-o", "{out}", "--include", "*x"]),
    ("init", ["config.json", "-o", "{out}", "--include", "("]),
    ("backslash", ["model", "--data", "d.txt", "-o", "{out}", "--include", "("]),
    ("deepshape", ["model", "--data", "d.txt", "-o", "{out}", "--exclude", "("]),
    ("diff", ["a.json", "b.json", "--metric", "("]),
]


@pytest.mark.parametrize(("name", "args"), BAD_REGEX, ids=[c[0] for c in BAD_REGEX])
def test_malformed_regex_is_a_usage_error_before_any_work(name, args, tmp_path) -> None:
    out = tmp_path / "out"
    res = run(name, *[a.format(out=out) for a in args])
    assert res.exit_code == 2, res.output
    assert "not a valid regular expression" in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


BAD_GATES = [
    ("analyze", ["ck", "--fail-if", "eg_bits>>4"]),
    ("quantize-rf8", ["ck", "-o", "{out}", "--fail-if", "sqnr_db"]),
    ("pack", ["ck", "-o", "{out}", "--fail-if", "ratio<three"]),
    ("pack", ["ck", "-o", "{out}", "--fail-if", "ratoi<3"]),  # pack knows its metric names up front
    ("eval", ["base", "--fail-if", "kl_mean=>1"]),
    ("eval", ["base", "--fail-under", "recovery<0.9"]),
]


@pytest.mark.parametrize(("name", "args"), BAD_GATES, ids=[f"{c[0]}-{c[1][-1]}" for c in BAD_GATES])
def test_malformed_fail_if_is_a_usage_error_before_any_work(name, args, tmp_path) -> None:
    out = tmp_path / "out.ggz"
    res = run(name, *[a.format(out=out) for a in args])
    assert res.exit_code == 2, res.output
    assert "--fail-" in res.output
    assert list(tmp_path.iterdir()) == []


#: A command's library entry point, replaced by `_never` so a run that got past the up-front checks fails.
ENTRY = {"analyze": ("ggcompress.io.checkpoint", "open_checkpoint"),
         "quantize-rf8": ("ggcompress.formats.quantize", "quantize_checkpoint"),
         "pack": ("ggcompress.codec.pack", "pack"),
         "eval": ("ggcompress.integrations.evaluation", "evaluate")}

UNKNOWN_GATES = [
    ("analyze", ["--fail-if", "nosuchmetric<1"]),
    ("quantize-rf8", ["-o", "{out}", "--fail-if", "nosuchmetric<1"]),
    ("quantize-rf8", ["--dry-run", "--fail-if", "sqnr_db<20", "--fail-if", "bits_per_weigth>9"]),
    ("pack", ["-o", "{out}", "--fail-if", "nosuchmetric<1"]),
    ("eval", ["--fail-if", "nosuchmetric<1"]),
    ("eval", ["--text", "{text}", "--fail-under", "recovery:kl=0.9"]),  # recovery:TASK/METRIC or recovery:ppl
    ("eval", ["--text", "{text}", "--fail-over", "kl_maen=0.1"]),
]


def _never(*args, **kwargs):
    raise AssertionError("the command started its work although a --fail-if names an unknown metric")


@pytest.mark.parametrize(("name", "args"), UNKNOWN_GATES, ids=[f"{c[0]}-{c[1][-1]}" for c in UNKNOWN_GATES])
def test_unknown_gate_metric_is_refused_up_front(name, args, minilm_dir, tmp_path, monkeypatch) -> None:
    """A metric the command can never report: exit 2, one usage error, nothing read or written."""
    module, attr = ENTRY[name]
    monkeypatch.setattr(importlib.import_module(module), attr, _never)
    text = tmp_path.parent / f"{tmp_path.name}-text.txt"  # outside tmp_path, which must stay empty
    text.write_text("some text\n")
    out = tmp_path / ("out.ggz" if name == "pack" else "out")
    res = run(name, str(minilm_dir), *[a.format(out=out, text=text) for a in args])
    assert res.exit_code == 2, res.output
    assert "unknown metric" in res.stderr and res.stderr.count("Error:") == 1, res.stderr
    assert "Traceback" not in res.output and "error:" not in res.stderr and res.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_eval_accepts_task_metric_names_up_front() -> None:
    """eval's TASK/METRIC names come from lm-eval once the tasks ran: any name of that form passes."""
    from ggcompress.cli import GATE_METRICS

    known = GATE_METRICS["eval"]()
    for name in ("kl_mean", "recovery", "recovery:ppl", "ggc_cloze/acc", "recovery:ggc_cloze/acc",
                 "mmlu_anatomy/acc,none"):
        assert name in known, name
    for name in ("kl_maen", "acc", "recovery:ggc_cloze", "/acc", "ggc_cloze/"):
        assert name not in known, name


def test_quantize_and_analyze_gate_names_cover_their_reports(minilm_dir) -> None:
    """Every numeric total / summary value of real reports is accepted by --fail-if (no false exit 2)."""
    from ggcompress.names import ANALYZE_METRICS, QUANTIZE_METRICS

    res = run("quantize-rf8", str(minilm_dir), "--dry-run", "--include", ONE, "--compare", "--json",
              "--fail-if", "bits_per_param>9")
    assert res.exit_code == 0, res.output
    totals = json.loads(res.stdout)["checkpoints"][0]["totals"]
    assert set(totals) <= set(QUANTIZE_METRICS)
    res = run("analyze", str(minilm_dir), "--include", ONE, "--fit", "moments", "--json",
              "--fail-if", "ratio<0")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["checkpoints"][0]["summary"]
    numeric = {k for k, v in summary.items() if v is None or isinstance(v, int | float)}
    assert {"eg_bits", "ratio_eg", "rated_bytes"} <= numeric <= set(ANALYZE_METRICS)


def test_pack_gate_names_cover_its_report(minilm_dir, tmp_path) -> None:
    """Every numeric summary metric of a real pack report is accepted by --fail-if (no false exit 2)."""
    from ggcompress.codec.pack import GATE_METRICS

    res = run("pack", str(minilm_dir), "-o", str(tmp_path / "m.ggz"), "--include", ONE, "--json",
              "--fail-if", "ratio<0")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["checkpoints"][0]["summary"]
    numeric = {k for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric <= set(GATE_METRICS)


# ------------------------------------------------------------------------------- empty selection: exit 1


@pytest.mark.parametrize("name", ["analyze", "quantize-rf8", "pack"])
def test_selection_that_matches_nothing_is_an_error(name, minilm_dir, tmp_path) -> None:
    out = tmp_path / ("out.ggz" if name == "pack" else "out")
    args = [name, str(minilm_dir), "--include", "no_such_tensor"]
    if name != "analyze":
        args += ["-o", str(out)]
    res = run(*args, "--json")
    assert res.exit_code == 1, res.output
    assert "selects none" in res.stderr and "--include 'no_such_tensor'" in res.stderr
    assert "e.g. " in res.stderr  # names a few real tensor names as the hint
    assert res.stdout == "" and not out.exists()


# --------------------------------------------------------------------------------------- table widths


def test_shorten_middle_keeps_both_ends() -> None:
    name = "model.layers.11.self_attn.q_proj.weight"
    short = shorten_middle(name, 24)
    assert short == "…layers.11.…_proj.weight"
    assert shorten_middle("short", 20) == "short"
    # the layer index survives: it is what tells the rows of a table apart
    long = "encoder.layer.0.attention.output.LayerNorm.weight"
    assert shorten_middle(long, 24) == "…layer.0.…yerNorm.weight"
    assert shorten_middle(long, 34) == "encoder.layer.0.….LayerNorm.weight"
    assert shorten_middle("model.embed_tokens.weight", 20) == "model.em…kens.weight"


def test_fit_table_drops_optional_columns_and_keeps_numbers_whole() -> None:
    from rich.console import Console
    from rich.table import Table

    from ggcompress.cli._tables import fit_table

    table = Table()
    for col in ("tensors", "SQNR dB", "quantized before → after", "ratio", "checkpoint before → after",
                "ratio"):
        table.add_column(col)
    table.add_row("210/272", "28.44", "256.6 MiB → 128.9 MiB", "1.99×", "256.6 MiB → 155.9 MiB", "1.65×")
    console = Console(width=60, file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    fit_table(table, 60, console)
    headers = [str(c.header) for c in table.columns]
    # the quantized pair went together, so the one `ratio` left is the checkpoint's
    assert headers == ["tensors", "SQNR dB", "checkpoint before → after", "ratio"]
    with console.capture() as cap:
        console.print(table)
    assert "1.65×" in cap.get() and "1.99×" not in cap.get()


def test_fit_table_keeps_short_labels_whole() -> None:
    """eval's metric labels (first column, <= 20 chars) are not cut; the wide model column folds."""
    from rich.console import Console
    from rich.table import Table

    from ggcompress.cli._tables import fit_table

    table = Table()
    table.add_column("metric", no_wrap=True)
    table.add_column("smollm2-135m-instruct-bf16-0.1.2-r1 (baseline)", justify="right")
    table.add_row("perplexity (text) ↓", "12.25")
    console = Console(width=40, file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    fit_table(table, 40, console)
    with console.capture() as cap:
        console.print(table)
    assert "perplexity (text) ↓" in cap.get() and "12.25" in cap.get()
    assert max(len(line) for line in cap.get().splitlines()) <= 40


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


@pytest.mark.parametrize("columns", [80, 100, 150, 220])
def test_analyze_table_fits_the_width(columns, minilm_dir) -> None:
    res = run("analyze", str(minilm_dir), "--include", r"layer\.[01]\.", "--fit", "moments",
              env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert len(lines) > 10
    assert max(len(line) for line in lines) <= columns
    cells = [c for line in lines if "│" in line for c in _cells(line)]
    assert cells and not [c for c in cells if c and set(c) <= {"…", "."}]  # no number became `…`
    header = next(line for line in lines if "tensor" in line and "role" in line)
    assert "EG bits" in header and "H bits" in header and "β" in header  # the key columns stay
    if columns >= 220:  # nothing dropped when there is room (the per-row columns made 150 too narrow)
        assert "verdict" in header and "KS GG" in header and "β row" in header


def test_quantize_and_pack_tables_fit_80_columns(minilm_dir, tmp_path) -> None:
    for args in (["quantize-rf8", str(minilm_dir), "--dry-run", "--include", r"layer\.0\."],
                 ["pack", str(minilm_dir), "-o", str(tmp_path / "m.ggz"), "--include", ONE, "--tensors"]):
        res = run(*args, env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        assert max(len(line) for line in res.stderr.splitlines()) <= 80, res.stderr


# ------------------------------------------------------------------------------------------ permissions


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(mask, minilm_dir, tmp_path) -> None:
    old = os.umask(mask)
    try:
        for args in (["pack", "-o", str(tmp_path / "m.ggz")], ["quantize-rf8", "-o", str(tmp_path / "q")]):
            assert run(args[0], str(minilm_dir), *args[1:], "--include", ONE).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m.ggz").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o777 & ~mask
    for f in (tmp_path / "q").rglob("*"):
        assert f.stat().st_mode & 0o777 == (0o777 if f.is_dir() else 0o666) & ~mask, f


# ------------------------------------------------------------------------- training commands: bf16 stays


@pytest.fixture(scope="module")
def bf16_tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama saved in bfloat16, and a short training text."""
    train_txt, _ = fixtures.text()
    text = train_txt.read_text(encoding="utf-8")[:60_000]
    root = tmp_path_factory.mktemp("bf16")
    corpus = root / "train.txt"
    corpus.write_text(text, encoding="utf-8")
    folder = build_model_folder(root / "llama", text)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    assert {t.dtype for t in open_checkpoint(folder).tensors} == {"BF16"}
    return folder, corpus


@pytest.mark.parametrize("name", ["backslash", "deepshape"])
def test_training_commands_keep_bf16_follow_umask_and_show_no_library_bars(name, bf16_tiny, tmp_path) -> None:
    folder, corpus = bf16_tiny
    out = tmp_path / "out"
    common = [str(folder), "--data", str(corpus), "-o", str(out), "--block-size", "32", "--batch-size", "2",
              "--eval-blocks", "2"]
    extra = (["--rate-steps", "1", "--recover-steps", "1", "--save-every", "0"] if name == "backslash"
             else ["--finetune-steps", "1", "--step", "2^-8"])
    old = os.umask(0o027)
    try:
        res = run(name, *common, *extra)
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert {t.dtype for t in open_checkpoint(out).tensors} == {"BF16"}  # --save-dtype auto: the input's
    assert out.stat().st_mode & 0o777 == 0o750
    for f in out.rglob("*"):
        assert f.stat().st_mode & 0o777 == (0o750 if f.is_dir() else 0o640), f
    # transformers' "Loading weights: 100%|███| ..." tqdm bar must not interleave with our output
    assert "it/s]" not in res.stderr and "Loading weights" not in res.stderr, res.stderr


# ------------------------------------------------------------------------------------- fast --help


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(args) -> None:
    code = ("import sys\nfrom ggcompress.cli import main\nsys.argv = ['ggcompress', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          check=True)
    assert "HEAVY=\n" in proc.stdout, proc.stdout
    assert "analyze" in proc.stdout or "version" in proc.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_does_not_import_torch(name) -> None:
    """`ggcompress NAME --help` imports the command's module but not the library behind it (docs/cli.md)."""
    code = ("import sys\nfrom ggcompress.cli import main\nsys.argv = ['ggcompress', sys.argv[1], '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('EXIT=' + str(e.code))\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'scipy', 'safetensors') "
            "if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, env=env,
                          check=True)
    assert f"Usage: ggcompress {name} [OPTIONS]" in proc.stdout, proc.stdout + proc.stderr
    assert "EXIT=0\n" in proc.stdout and "HEAVY=\n" in proc.stdout, proc.stdout + proc.stderr

"""`ggcompress eval`: lm-eval scores and next-token KL of models side by side vs a baseline."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ggcompress.cli._common import console, emit_json, expand_inputs
from ggcompress.errors import GGError
from ggcompress.names import LOAD_DTYPES
from ggcompress.reports.gates import gate_from_bound, parse_gate

_TEXT_ROWS = (("ppl", "perplexity (text)", "↓"), ("ppl_ratio", "ppl ratio", "↓"), ("kl_mean", "KL mean", "↓"),
              ("kl_median", "KL median", "↓"), ("kl_p99", "KL p99", "↓"), ("kl_max", "KL max", "↓"),
              ("same_top1", "same top-1", "↑"))


class BatchSize(click.ParamType):
    """A positive integer or ``auto`` (lm-eval's own spelling)."""

    name = "N|auto"

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is not a positive integer or 'auto'", param, ctx)
        return n


class ProgressLines:
    """Plain progress lines for a log (stderr not a terminal): one per phase, then one per N steps.

    N is a tenth of the phase when its total is known, else every 4x more lm-eval tokens (1k, 4k, 16k...),
    so a 20-minute run shows it is alive without flooding a CI log.
    """

    def __init__(self) -> None:
        self.stage: str | None = None
        self.next_at = 0
        self.start = time.monotonic()

    def line(self, stage: str, done: int, total: int | None) -> str | None:
        elapsed = f"[{time.monotonic() - self.start:7.1f}s]"
        if stage != self.stage:
            self.stage = stage
            self.next_at = self._step(0, total)
            return f"{elapsed} {stage}" + (f" (0/{total})" if total else "")
        if done < self.next_at:
            return None
        self.next_at = self._step(done, total)
        return f"{elapsed} {stage}: {done}/{total}" if total else f"{elapsed} {stage}: {done:,}"

    @staticmethod
    def _step(done: int, total: int | None) -> int:
        if total:
            return min(total, done + max(1, total // 10))
        return max(1000, 4 * done)


@click.command("eval")
@click.argument("models", nargs=-1, required=True, metavar="BASELINE [MODEL...] | -")
@click.option("--tasks", "-t", metavar="T1,T2",
              help="Comma-separated lm-eval tasks. [default: ggc_perplexity,ggc_cloze with --text, else "
                   "ggc_cloze; 'none' runs only the --text comparison]")
@click.option("--text", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="UTF-8 text (documents separated by blank lines) for ggc_perplexity and the next-token "
                   "KL / perplexity-ratio comparison.")
@click.option("--include-path", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="A folder of your own lm-eval task YAMLs (repeatable).")
@click.option("--limit", type=click.FloatRange(min=0, min_open=True), metavar="N",
              help="Examples per task: a count, or a fraction when below 1.")
@click.option("--batch-size", "-b", type=BatchSize(), default="1", show_default=True, metavar="N|auto",
              help="Batch size of lm-eval and of the KL windows; auto: lm-eval finds the largest that fits "
                   "(the KL windows then run one at a time).")
@click.option("--num-fewshot", type=click.IntRange(min=0), metavar="N",
              help="Few-shot examples per prompt, for every task. [default: each task's own, else 0]")
@click.option("--output-path", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write lm-eval's own results files: DIR/<model label>/results_<date>.json.")
@click.option("--log-samples", is_flag=True,
              help="With --output-path: also write lm-eval's per-sample records "
                   "(samples_<task>_<date>.jsonl).")
@click.option("--model-args", metavar="K=V,...",
              help="Extra lm-eval HFLM arguments, e.g. 'add_bos_token=True,truncation=True' (not the ones "
                   "that load the model: use MODEL, --device, --dtype, --batch-size, --max-length).")
@click.option("--apply-chat-template", is_flag=True,
              help="Wrap prompts in the tokenizer's chat template (lm-eval's --apply_chat_template).")
@click.option("--fewshot-as-multiturn", is_flag=True,
              help="With --apply-chat-template: few-shot examples as a multi-turn conversation.")
@click.option("--system-instruction", metavar="TEXT", help="System instruction prepended to every prompt.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu, cuda, cuda:1, mps.")
@click.option("--dtype", type=click.Choice(LOAD_DTYPES),
              help="Weights dtype. [default: float32 on cpu, the checkpoint's dtype elsewhere]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for lm-eval (sampling, few-shot).")
@click.option("--max-tokens", type=click.IntRange(min=2), default=4096, show_default=True,
              help="At most this many tokens of --text for the KL comparison (windows spread over the text).")
@click.option("--window", type=click.IntRange(min=2), default=512, show_default=True,
              help="Context window of the KL comparison, in tokens (at most the baseline's context).")
@click.option("--max-length", type=click.IntRange(min=2), metavar="N",
              help="Cap lm-eval's context length (rolling perplexity windows). [default: the model's]")
@click.option("--fail-if", "fail_if", multiple=True, metavar="EXPR",
              help="Exit 1 when a model's metric satisfies EXPR, e.g. 'kl_mean>0.05', 'recovery<0.99' "
                   "(repeatable; metric names in docs/eval.md).")
@click.option("--fail-under", multiple=True, metavar="NAME=X", help="Same as --fail-if 'NAME<X'.")
@click.option("--fail-over", multiple=True, metavar="NAME=X", help="Same as --fail-if 'NAME>X'.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the comparison as a markdown table.")
@click.option("--force", is_flag=True, help="Overwrite the --markdown file if it exists.")
def eval_cmd(models: tuple[str, ...], tasks: str | None, text: Path | None, include_path: tuple[Path, ...],
             limit: float | None, batch_size: int | str, num_fewshot: int | None, output_path: Path | None,
             log_samples: bool, model_args: str | None, apply_chat_template: bool, fewshot_as_multiturn: bool,
             system_instruction: str | None, device: str, dtype: str | None, seed: int, max_tokens: int,
             window: int, max_length: int | None, fail_if: tuple[str, ...], fail_under: tuple[str, ...],
             fail_over: tuple[str, ...], as_json: bool, markdown: Path | None, force: bool) -> None:
    """Evaluate models side by side; the first MODEL is the baseline.

    MODEL is an HF folder, a .gguf file or a hub id; `-` reads them from stdin. Each model runs the
    lm-eval tasks, and with --text ggcompress compares its next-token distributions with the
    baseline's (KL mean/median/p99, same top-1, perplexity ratio). Recovery is model/baseline for
    higher-is-better metrics and baseline/model for lower-is-better ones.

    Example: `ggcompress eval base/ q4/ --text val.txt --fail-if 'kl_mean>0.05' --json`.
    """
    gates = ([parse_gate(e) for e in fail_if] + [gate_from_bound(s, "under") for s in fail_under]
             + [gate_from_bound(s, "over") for s in fail_over])
    task_list = None
    if tasks is not None and tasks.strip().lower() == "none":
        task_list = ()
    elif tasks is not None:
        task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
        if not task_list:
            raise click.BadParameter("give at least one task, or 'none'", param_hint="--tasks")
    if task_list == () and text is None:
        raise GGError("--tasks none leaves nothing to do without --text FILE")
    # The library imports torch (seconds): here, not at module level, so `eval --help` stays fast.
    from ggcompress.integrations.evaluation import EvalOptions, evaluate
    from ggcompress.io.checkpoint import atomic_write_bytes, check_output_path

    if markdown is not None:  # fail before the long run, not after it (exists, read-only, bad path...)
        check_output_path(markdown, [*models, *([text] if text else [])], force=force, kind="file")
    if limit is not None and limit >= 1 and limit == int(limit):
        limit = int(limit)
    options = EvalOptions(tasks=task_list, text=text, include_paths=include_path, limit=limit,
                          batch_size=batch_size, device=device, dtype=dtype, seed=seed, max_tokens=max_tokens,
                          window=window, max_length=max_length, gates=tuple(gates), num_fewshot=num_fewshot,
                          output_path=output_path, log_samples=log_samples, model_args=model_args,
                          apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
                          system_instruction=system_instruction)
    _quiet_libraries()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=None, count="")
        lines = None if console.is_terminal else ProgressLines()

        def progress(stage: str, done: int, total: int | None) -> None:
            count = f"{done}/{total}" if total is not None else (f"{done:,}" if done else "")
            bar.update(task, description=escape(stage), completed=done, total=total, count=count)
            if lines is not None:
                line = lines.line(stage, done, total)
                if line is not None:
                    console.print(escape(line), soft_wrap=True, highlight=False)

        report = evaluate(expand_inputs(models), options, progress)
    for note in report.get("notes", []):  # lengths clamped to a model's context
        console.print(f"note: {escape(note)}")
    console.print(render_table(report))
    if as_json:  # before the file: if writing it fails now (disk full), the results are still out
        emit_json(report)
    if markdown is not None:
        try:
            atomic_write_bytes(markdown, render_markdown(report).encode("utf-8"), force=force)
        except GGError as e:
            raise GGError(f"{e} (the results are in the table above)") from None
        console.print(f"wrote {markdown}")
    for row in report["models"]:
        for failure in row["failed_gates"]:
            console.print(f"[red]FAIL[/red] {escape(row['label'])}: {escape(failure['reason'])}")
    if not report["passed"]:
        available = ", ".join(report["models"][-1]["metrics"])
        if any(f["value"] is None for r in report["models"] for f in r["failed_gates"]):
            console.print(f"metrics available to gates: {escape(available)}")
        raise SystemExit(1)


def _quiet_libraries() -> None:
    """lm-eval, transformers and datasets log and draw bars on stderr; our progress bar covers them."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
        datasets.utils.logging.disable_progress_bar()
    except ImportError:  # the eval extra is missing: evaluate() says so in one line
        pass


# ---------------------------------------------------------------------------------------------- rendering


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the side-by-side comparison: one row per metric, one column per model.

    Candidate cells show the recovery vs the baseline in parentheses where it is defined.
    """
    models = report["models"]
    header = ["metric"] + [m["label"] + (" (baseline)" if m["baseline"] else "") for m in models]
    rows: list[list[str]] = []
    base = models[0]
    for task, entry in base["tasks"].items():
        for name, metric in entry["metrics"].items():
            arrow = {True: " ↑", False: " ↓"}.get(metric["higher_is_better"], "")
            cells = []
            for m in models:
                mine = m["tasks"].get(task, {}).get("metrics", {}).get(name, {})
                cells.append(_cell(mine.get("value"), None if m["baseline"] else mine.get("recovery")))
            rows.append([f"{task} {name}{arrow}"] + cells)
    if base["text"] is not None:
        for key, title, arrow in _TEXT_ROWS:
            cells = []
            for m in models:
                value = m["text"][key]
                if key == "same_top1":
                    cells.append(_percent(value))
                elif key == "ppl":
                    cells.append(_cell(value, None if m["baseline"] else m["text"]["recovery"]))
                else:
                    cells.append(_fmt(value))
            rows.append([f"{title} {arrow}"] + cells)
    rows.append(["recovery (worst)"] + [_percent(m["recovery"]) for m in models])
    rows.append(["recovery (mean)"] + [_percent(m["recovery_mean"]) for m in models])
    rows.append(["time (s)"] + [f"{sum(m['seconds'].values()):.1f}" for m in models])
    return header, rows


def render_table(report: dict) -> Table:
    header, rows = table_rows(report)
    text = report["text"]
    caption = (f"KL over {text['tokens']:,} tokens of {text['path']} ({text['windows']} windows of "
               f"{text['window']})" if text else None)
    table = Table(title="ggcompress eval", caption=caption)
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


def render_markdown(report: dict) -> str:
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    text = report["text"]
    notes = [f"Baseline: `{report['baseline']}`. Tasks: {', '.join(report['config']['tasks']) or 'none'}"
             + (f", limit {report['config']['limit']}" if report["config"]["limit"] else "") + "."]
    if text:
        notes.append(f"KL / same top-1 / perplexity over {text['tokens']:,} tokens of `{text['path']}` "
                     f"({text['windows']} windows of {text['window']} tokens).")
    notes.append("Recovery (in parentheses) = model/baseline where higher is better, baseline/model where "
                 "lower is better.")
    for row in report["models"]:
        for failure in row["failed_gates"]:
            notes.append(f"**FAIL** {row['label']}: {failure['reason']}")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:,.1f}" if abs(value) >= 10_000 else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _cell(value: float | None, recovery: float | None) -> str:
    return _fmt(value) + (f" ({_percent(recovery)})" if recovery is not None else "")

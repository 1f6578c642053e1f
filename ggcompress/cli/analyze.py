"""`ggcompress analyze`: fit GG shapes and measure compressibility of every tensor."""

from __future__ import annotations

import re

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ggcompress.cli._common import console, emit_json, expand_inputs, table_console
from ggcompress.errors import GGError
from ggcompress.reports.gates import check_gates, parse_gate


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT... | -")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per tensor on stdout.")
@click.option("--include", metavar="REGEX", help="Only tensors whose name matches (re.search).")
@click.option("--exclude", metavar="REGEX", help="Skip tensors whose name matches (re.search).")
@click.option(
    "--sample",
    type=click.IntRange(min=64),
    metavar="N",
    help="Analyze a seeded random subsample of N values per tensor (faster on big models).",
)
@click.option(
    "--step",
    default="2^-8",
    show_default=True,
    metavar="STEP",
    help="Quantization step for the rate columns: 2^-S, S (an exponent) or a number.",
)
@click.option(
    "--eg-k",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="Exp-Golomb order k of the rate measure.",
)
@click.option(
    "--fit",
    type=click.Choice(["mle", "moments"]),
    default="mle",
    show_default=True,
    help="β estimator: moment ratio, or MLE refinement on a subsample (as scipy's gennorm.fit).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsampling.")
@click.option(
    "--granularity",
    default="row",
    show_default=True,
    metavar="LIST",
    help="Shape below the tensor, comma-separated: row (per row, pooled after per-row normalization, "
    "kurtosis split, outliers), col, block:N (N consecutive values of a row); 'tensor' for none.",
)
@click.option(
    "--row-fit",
    type=click.Choice(["moments", "mle"]),
    default="moments",
    show_default=True,
    help="β estimator per row / column / block (mle: Newton per group, about 3 more passes).",
)
@click.option(
    "--outliers",
    "outlier_k",
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    metavar="K",
    help="Count values beyond K standard deviations of the tensor (and of their row).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    metavar="N",
    help="Rows, columns and positions listed per tensor (outliers, sensitivity).",
)
@click.option(
    "--calib",
    type=click.Path(exists=True),
    metavar="TEXT",
    help="Estimate each tensor's sensitivity (squared gradients) on this .txt/.jsonl text; causal LMs only.",
)
@click.option(
    "--calib-windows",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    metavar="N",
    help="Calibration windows (one forward+backward each).",
)
@click.option(
    "--calib-length",
    type=click.IntRange(min=2),
    default=512,
    show_default=True,
    metavar="T",
    help="Tokens per calibration window, clamped to the model's context length.",
)
@click.option("--summary", "summary_only", is_flag=True, help="Show only the per-role and total tables.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write PNG histograms (log density) with fitted GG/Gaussian/Laplace curves to DIR.",
)
@click.option(
    "--plot-by",
    type=click.Choice(["tensor", "role"]),
    default="role",
    show_default=True,
    help="One plot per tensor or per layer role.",
)
@click.option(
    "--fail-if",
    "fail_if",
    multiple=True,
    metavar="EXPR",
    help="Exit 1 when a checkpoint's summary value satisfies EXPR, e.g. 'eg_bits>4.5' or "
    "'ratio<3' (repeatable; bits_per_param = eg_bits, ratio = ratio_eg).",
)
def analyze(
    checkpoints: tuple[str, ...],
    as_json: bool,
    as_csv: bool,
    include: str | None,
    exclude: str | None,
    sample: int | None,
    step: str,
    eg_k: int,
    fit: str,
    seed: int,
    summary_only: bool,
    plot_dir: str | None,
    plot_by: str,
    granularity: str = "row",
    row_fit: str = "moments",
    outlier_k: float = 6.0,
    top: int = 5,
    calib: str | None = None,
    calib_windows: int = 8,
    calib_length: int = 512,
    fail_if: tuple[str, ...] = (),
) -> None:
    """Fit the generalized-Gaussian shape of every tensor and report compressibility.

    CHECKPOINT is a .safetensors file, a sharded index, an HF model folder or a hub id; `-` reads
    paths from stdin. Example: `ls ckpts/*.safetensors | ggcompress analyze - --json`.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    gates = [parse_gate(e) for e in fail_if]
    for pattern, flag in ((include, "--include"), (exclude, "--exclude")):
        _check_regex(pattern, flag)
    # The library imports torch (seconds): here, not at module level, so `analyze --help` stays fast.
    from ggcompress.io.checkpoint import open_checkpoint
    from ggcompress.reports.report import analyze_csv, print_analyze
    from ggcompress.stats import rate
    from ggcompress.stats.analyze import AnalyzeOptions, analyze_checkpoint, document, select
    from ggcompress.stats.granularity import parse_granularity

    try:
        grains = parse_granularity(granularity)
    except GGError as e:
        raise click.BadParameter(str(e).removeprefix("--granularity: "), param_hint="--granularity") from None
    opts = AnalyzeOptions(
        step=rate.parse_step(step), eg_k=eg_k, sample=sample, seed=seed, fit=fit,
        include=include, exclude=exclude, granularity=grains, row_fit=row_fit, outlier_k=outlier_k,
        top=top, calib=calib, calib_windows=calib_windows, calib_length=calib_length,
    )  # fmt: skip
    if plot_dir:
        from ggcompress.reports import plot

        opts.keep_values = plot.TENSOR_SAMPLE if plot_by == "tensor" else plot.ROLE_SAMPLE
        opts.keep_pooled = plot_by == "tensor"
    plots: list = []
    cks = [open_checkpoint(p) for p in expand_inputs(checkpoints)]  # fail fast on any bad input
    total = sum(t.numel for ck in cks for t in select(ck.tensors, include, exclude))
    reports = []
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("analyzing", total=total)
        for i, ck in enumerate(cks):
            what = f"calibrating ({calib_windows} windows), then analyzing" if calib else "analyzing"
            bar.update(task, description=f"{what} {ck.source}")
            prefix = f"{i}-" if len(cks) > 1 else ""

            def step_done(info, rep, prefix=prefix, source=ck.source):
                bar.update(task, description=f"analyzing {source}")
                bar.advance(task, info.numel)
                if plot_dir and plot_by == "tensor":  # plot now, so values never pile up in memory
                    plots.append(plot.plot_tensor(rep, plot_dir, prefix))
                    rep.values = None
                    if rep.detail is not None:
                        rep.detail.pooled_values = None

            reports.append(analyze_checkpoint(ck, opts, step_done))
            if plot_dir and plot_by == "role":
                plots.extend(plot.plot_roles(ck.source, reports[-1].tensors, plot_dir, prefix))
                for rep in reports[-1].tensors:
                    rep.values = None
    doc = document(reports, opts)
    if plot_dir:
        console.print(f"wrote {sum(p is not None for p in plots)} plots to {plot_dir}")
    if as_json:
        emit_json(doc)
    elif as_csv:
        click.echo(analyze_csv(doc), nl=False)
    else:
        print_analyze(doc, table_console(), per_tensor=not summary_only)
    failed = False
    for ck in doc["checkpoints"]:
        for f in check_gates(gate_values(ck["summary"]), gates):
            console.print(f"[red]FAIL[/red] {escape(ck['source'])}: {escape(f.reason)}", soft_wrap=True)
            failed = True
    if failed:
        raise SystemExit(1)


def gate_values(summary: dict) -> dict:
    """Numeric summary values for --fail-if, plus the names pack uses: bits_per_param, ratio."""
    values = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    values.setdefault("bits_per_param", summary.get("eg_bits"))
    values.setdefault("ratio", summary.get("ratio_eg"))
    return values


def _check_regex(pattern: str | None, flag: str) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise click.BadParameter(f"not a valid regular expression ({e})", param_hint=flag) from None

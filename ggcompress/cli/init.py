"""`ggcompress init`: write a freshly GG-initialized HF model folder from a config."""

from __future__ import annotations

import contextlib

import click
from rich.table import Table

from ggcompress.cli._common import console, emit_json
from ggcompress.names import INIT_MODES, INIT_SAVE_DTYPES


@click.command("init")
@click.argument("source", metavar="CONFIG_OR_MODEL")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Output model folder.")
@click.option("--shape", type=float, default=None, metavar="B",
              help="GG shape β for every weight (2 = normal, 1 = Laplace). Default 2; with --shape-from, "
              "the β of roles the reference lacks.")
@click.option("--shape-from", "shape_from", metavar="REF",
              help="Take β per layer role from a trained checkpoint (analyzed now) or an `analyze --json` "
              "report.")
@click.option("--xi", type=float, default=1.0, show_default=True,
              help="Variance gain ξ: Var[W] = ξ/fan (2 Kaiming, 1 LeCun).")
@click.option("--mode", type=click.Choice(INIT_MODES), default="fan_in", show_default=True,
              help="Fan n of the variance; fan_out (= nn.Linear weight.shape[0]) is the reference's choice.")
@click.option("--include", metavar="REGEX", help="Only re-initialize parameters matching (re.search).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (same seed, same weights).")
@click.option("--dtype", type=click.Choice(INIT_SAVE_DTYPES), default="float32", show_default=True,
              help="dtype of the saved weights.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one versioned JSON document on stdout.")
def init_cmd(source: str, out: str, shape: float | None, shape_from: str | None, xi: float, mode: str,
             include: str | None, seed: int, dtype: str, force: bool, as_json: bool) -> None:
    """Build the model described by CONFIG_OR_MODEL (a config.json, a model folder or a hub id) with
    GG-initialized weights: α = sqrt(ξ/n·Γ(1/β)/Γ(3/β)), W ~ GG(β, α) so Var[W] = ξ/n; norm gains 1,
    biases 0. Tokenizer files of the source are copied, so OUT is ready to train.
    """
    from ggcompress.methods.init import init_checkpoint  # imports torch: not at module level (fast --help)

    status = console.status("initializing", spinner="dots") if not as_json else contextlib.nullcontext()
    with status:
        report = init_checkpoint(source, out, shape=2.0 if shape is None else shape, shape_from=shape_from,
                                 xi=xi, mode=mode, include=include, seed=seed, dtype=dtype, force=force)
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"{report['architecture']} · {report['params']:,} params → {report['output']}")
    for col in ("role", "tensors", "params", "init", "β"):
        table.add_column(col, justify="left" if col in ("role", "init") else "right")
    for role, r in report["roles"].items():
        beta = "" if r["beta"] is None else f"{r['beta']:.3f}"
        table.add_row(role, str(r["tensors"]), f"{r['params']:,}", r["action"], beta)
    console.print(table)

"""benchmarks/bench_formats.py rendering and noise figures, on hand-made result rows (no model runs).

The docs tables are pasted from ``--render``: the MiniLM/SmolLM2 table must keep its layout when a
causal LM of its own (wikilm) is added, and the standard errors printed next to the wikilm figures
must be the window-clustered ones worked out below.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_formats as bf  # noqa: E402

MINI = {"class": "4-bit", "bits_per_weight": 4.5021, "sqnr_db": 22.061, "cos_mean": 0.97731,
        "cos_min": 0.97068}
SMOL = {"class": "4-bit", "bits_per_weight": 4.5012, "sqnr_db": 22.031, "kl_mean": 0.15501, "kl_p99": 1.0213,
        "same_top1": 0.80002, "ppl_ratio": 1.20111}
OLD_TABLE = (
    "| class | format | MiniLM bits/w | MiniLM SQNR dB | MiniLM cos mean / min | SmolLM2 bits/w | "
    "SmolLM2 SQNR dB | KL mean | KL p99 | same top-1 | ppl ratio |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
    "| 4-bit | gf4 block:32 | 4.502 | 22.06 | 0.9773 / 0.9707 | 4.501 | 22.03 | 0.155 | 1.02 | 0.800 | "
    "1.201 |"
)


def _causal_row(kl_w: list[float], dnll_w: list[float], bits: float = 4.5) -> dict:
    kl, d = sum(kl_w) / len(kl_w), sum(dnll_w) / len(dnll_w)
    return {"class": "4-bit", "bits_per_weight": bits, "sqnr_db": 20.0, "kl_mean": kl, "kl_p99": 0.01,
            "same_top1": 0.97, "ppl_ratio": math.exp(d), "tokens": 127 * len(kl_w), "windows": len(kl_w),
            "ppl_base": 278.5, "kl_mean_se": bf._se(kl_w), "ppl_ratio_se": math.exp(d) * bf._se(dnll_w),
            "window_kl": kl_w, "window_dnll": dnll_w}


def test_minilm_smollm2_table_keeps_its_layout():
    assert bf.markdown({"minilm": {"gf4 block:32": MINI}, "smollm2": {"gf4 block:32": SMOL}}) == OLD_TABLE


def test_paired_difference_and_standard_errors():
    a = _causal_row([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    b = _causal_row([0.5, 1.5, 2.0], [0.0, 0.0, 0.0])
    # per-window KL differences 0.5, 0.5, 1.0: mean 2/3, sample std sqrt(1/12), SE sqrt(1/12)/sqrt(3) = 1/6
    d = bf.paired(a, b)
    assert d["dkl"] == pytest.approx(2 / 3)
    assert d["dkl_se"] == pytest.approx(1 / 6)
    # log-ppl differences 0.1, 0.2, 0.3: ratio exp(0.2), SE by the delta method exp(0.2) * 0.1 / sqrt(3)
    assert d["ppl_ratio"] == pytest.approx(math.exp(0.2))
    assert d["ppl_ratio_se"] == pytest.approx(math.exp(0.2) * 0.1 / math.sqrt(3))
    assert a["kl_mean_se"] == pytest.approx(1 / math.sqrt(3))  # windows 1, 2, 3: std 1
    assert math.isnan(bf._se([1.0]))


def test_wikilm_gets_its_own_table_after_the_old_one():
    ref = _causal_row([0.001, 0.002, 0.003], [0.0, 0.0, 0.0])
    q40 = _causal_row([0.0015, 0.0025, 0.0030], [0.01, 0.0, -0.01])
    wide = {**_causal_row([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]), "class": "8-bit"}  # other class: not paired
    text = bf.markdown({"minilm": {"gf4 block:32": MINI}, "smollm2": {"gf4 block:32": SMOL},
                        "wikilm": {"gf4 block:32": ref, "q4_0 (gguf)": q40, "gf8 channel": wide}})
    assert text.startswith(OLD_TABLE + "\n\n| class | format | wikilm bits/w |")
    lines = text.splitlines()
    assert "| 4-bit | gf4 block:32 | 4.500 | 20.00 | 0.002 ± 0.00058 | 0.01 | 0.970 | 1.0000 ± 0 |" in lines
    assert any("same 3 windows (381 scored tokens; base perplexity 278.5)" in line for line in lines)
    # q4_0 − gf4 per window: 0.0005, 0.0005, 0: mean 3.33e-4, SE 1.67e-4; log-ppl ratio mean 0
    assert "| q4_0 (gguf) | +0.000333 ± 0.00017 | 1.0000 ± 0.0058 |" in lines
    assert not any(line.startswith("| gf8 channel | ") and line.count("|") == 4 for line in lines)
    only = bf.markdown({"wikilm": {"gf4 block:32": ref}})  # no MiniLM/SmolLM2 rows: no empty old table
    assert only.startswith("| class | format | wikilm bits/w |") and "paired" not in only


def test_unknown_model_is_refused_before_any_fixture_is_built(monkeypatch):
    def build():
        raise AssertionError("a fixture was built")

    monkeypatch.setattr(bf, "FIXTURES", {"minilm": build, "smollm2": build, "wikilm": build})
    monkeypatch.setattr(sys, "argv", ["bench_formats.py", "--models", "wikilm,gpt9", "--no-kl"])
    with pytest.raises(SystemExit) as exc:
        bf.main()
    assert exc.value.code == 2

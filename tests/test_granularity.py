"""Shape below the tensor (ggcompress.stats.granularity / outliers) against known synthetic truths,
float64 references and the Cramér–Rao bound of tests/test_gg.py."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_gg import crb_se, moment_se

from ggcompress.errors import GGError
from ggcompress.stats import gg
from ggcompress.stats.granularity import kurtosis_parts, parse_granularity, tensor_shape


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gg_rows(betas: np.ndarray, scales: np.ndarray, cols: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """One GG row per (β, σ): unit-variance GG(β) values times σ."""
    g = gen(seed)
    rows = [gg.sample(cols, float(b), float(gg.alpha_from_std(1.0, float(b))), generator=g,
                      dtype=torch.float64) for b in betas]
    return (torch.stack(rows) * torch.from_numpy(scales)[:, None]).to(dtype)


@pytest.mark.parametrize("fit", ["mle", "moments"])
def test_known_per_row_beta_and_scale_spread_are_recovered(fit: str) -> None:
    rows_per, cols = 150, 2000
    truth = np.repeat([1.0, 2.0], rows_per)
    scales = np.exp(np.random.default_rng(1).normal(0, 0.7, truth.size))
    x = gg_rows(truth, scales, cols, seed=2)
    rep = tensor_shape(x, ("row",), fit=fit)
    assert rep.rows.groups == truth.size and rep.rows.size == cols
    for b in (1.0, 2.0):
        est = rep.rows.beta[truth == b]
        se = crb_se(b, cols) if fit == "mle" else moment_se(b, cols)
        # The mean of 150 estimates sits within 4 standard errors of the truth (SE/√150); the MLE's
        # O(1/n) small-sample bias at n = 2000 is ~0.1 SE of one row, far inside that.
        assert abs(est.mean() - b) < 4 * se / math.sqrt(rows_per)
        # The spread of the per-row estimates is the estimator's standard error: the Cramér–Rao bound
        # for the MLE, the delta-method SE for the moment ratio (never below Cramér–Rao). The sample SD
        # of 150 values has a relative SE of 1/√300 ≈ 6%, so ±25% is a 4-sigma band.
        assert 0.75 * se < est.std() < 1.25 * se
        assert est.std() > 0.75 * crb_se(b, cols)
    # Scales: each row's σ estimate is within 5 of its own standard errors, sqrt((κ+2)/(4n)) relative
    # (κ = 3, the Laplace rows' excess kurtosis, bounds both families).
    rel = np.abs(rep.rows.std / scales - 1)
    assert rel.max() < 5 * math.sqrt((3 + 2) / (4 * cols))
    # Pooled after per-row normalization: a half/half mixture of unit-variance Laplace and Gaussian
    # rows, whose excess kurtosis is the mean of theirs, (3 + 0)/2.
    assert rep.pooled.kurtosis == pytest.approx(1.5, abs=0.15)


def test_gaussian_rows_with_lognormal_scales_look_peaky_only_as_a_whole() -> None:
    rows, cols, s = 600, 1024, 0.5
    scales = np.exp(np.random.default_rng(3).normal(0, s, rows))
    x = gg_rows(np.full(rows, 2.0), scales, cols, seed=4)
    tensor_beta = gg.fit_mle(x).beta
    rep = tensor_shape(x, ("row",), fit="mle")
    assert tensor_beta < 1.6  # the scale mixture alone makes the tensor look between Laplace and Gaussian
    # Per-row: Gaussian. Median of 600 MLEs: SE ≈ 1.25·crb_se/√600 ≈ 0.01; 4 SE.
    assert abs(np.median(rep.rows.beta) - 2.0) < 4 * 1.25 * crb_se(2.0, cols) / math.sqrt(rows)
    # Pooled after normalization: the MLE over all 614,400 values, SE ≈ crb_se(2, 614400) = 0.0012
    # (normalizing by each row's estimated σ_r only moves it at second order); 5 SE.
    assert abs(rep.pooled.beta - 2.0) < 5 * crb_se(2.0, rows * cols)
    # Almost all the excess kurtosis is the scale mixture: within-row parts are Gaussian (0 ± noise).
    k = rep.rows.kurtosis
    assert k.total > 2.0 and k.scale_share > 0.9
    assert abs(k.within) < 0.1 * k.total and abs(k.location) < 0.01 * k.total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kurtosis_decomposition_sums_to_the_tensor_excess_kurtosis(dtype: torch.dtype) -> None:
    g = gen(5)
    # Rows with different means, scales and skewed shapes, so all three parts are non-zero.
    rows, cols = 97, 333
    base = torch.distributions.Gamma(2.0, 1.0).sample((rows, cols))  # skewed
    x = (base * torch.exp(torch.randn(rows, 1, generator=g)) + torch.randn(rows, 1, generator=g)).to(dtype)
    rep = tensor_shape(x, ("row", "col", "block:37"))
    ref = stats.kurtosis(x.double().numpy().ravel())  # float64 reference, excess, population
    for grouping in (rep.rows, rep.cols, rep.blocks[37]):
        k = grouping.kurtosis
        assert min(abs(k.scale), abs(k.within), abs(k.location)) > 1e-3
        # Float64 moments of float32/64 values: the identity is exact, rounding is ~1e-15 relative.
        assert k.scale + k.within + k.location == pytest.approx(ref, rel=1e-9)
        assert k.total == pytest.approx(ref, rel=1e-9)


def test_kurtosis_parts_of_equal_gaussian_groups_are_zero_and_bf16_is_close() -> None:
    k = kurtosis_parts(np.zeros(4), np.ones(4), np.zeros(4), np.full(4, 3.0))
    assert (k.total, k.scale, k.within, k.location) == pytest.approx((0, 0, 0, 0), abs=1e-15)
    x = (torch.randn(64, 512, generator=gen(6)) * torch.linspace(0.5, 2, 64)[:, None]).bfloat16()
    ref = stats.kurtosis(x.double().numpy().ravel())
    # 16-bit inputs take float32 moments (as gg.Moments): sums of ≤ 512 float32 terms, ~1e-6 relative.
    assert tensor_shape(x).rows.kurtosis.total == pytest.approx(ref, rel=1e-4)


def test_outlier_positions_are_found_exactly() -> None:
    x = torch.randn(300, 700, generator=gen(7), dtype=torch.float64)
    planted = {(12, 40): 30.0, (12, 41): -25.0, (12, 500): 22.0, (250, 40): -21.0, (77, 3): 20.0}
    for (r, c), v in planted.items():
        x[r, c] = v
    rep = tensor_shape(x, ("row",), outlier_k=8.0, top=5)
    o = rep.outliers
    a = x.numpy()
    mu, sd = a.mean(), a.std()
    far = np.abs(a - mu) > 8 * sd
    assert set(zip(*np.nonzero(far), strict=True)) == set(planted)  # the reference agrees: only planted
    assert o.beyond == len(planted) and o.beyond_fraction == len(planted) / a.size
    assert [(r, c) for r, c, _, _ in o.top_values] == sorted(planted, key=lambda p: -abs(planted[p] - mu))
    assert [v for _, _, v, _ in o.top_values] == [planted[(r, c)] for r, c, _, _ in o.top_values]
    assert o.max_sigma == pytest.approx(np.abs(a - mu).max() / sd, rel=1e-12)
    assert o.top_rows[0] == (12, 3) and {o.top_rows[1][0], o.top_rows[2][0]} == {250, 77}
    assert o.top_cols[0] == (40, 2)
    assert o.rows_with_outliers == 3 and o.cols_with_outliers == 4
    row_ref = np.abs(a - a.mean(1, keepdims=True)).max(1) / a.std(1)
    np.testing.assert_allclose(o.row_max, row_ref, rtol=1e-12)
    # Each row's own σ: the same planted values are beyond 8σ_r, nothing else is.
    z = np.abs(a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    assert o.beyond_row_fraction == (z > 8).sum() / a.size == len(planted) / a.size
    assert tensor_shape(x, ("row",), outlier_k=8.0, top=0).outliers.max_sigma == o.max_sigma


def test_sampled_rows_and_groupings_that_do_not_apply() -> None:
    x = torch.randn(1000, 96, generator=gen(8))
    rep = tensor_shape(x, ("row", "col", "block:64"), max_values=9600)
    assert rep.rows.groups == 100 and np.all(np.diff(rep.rows.index) > 0)
    assert rep.cols is None and any("col" in n for n in rep.notes)
    assert 64 not in rep.blocks and any("block:64" in n for n in rep.notes)
    # Same seed, same rows; and every row's σ is that row's σ in the full tensor.
    again = tensor_shape(x, ("row",), max_values=9600)
    np.testing.assert_array_equal(again.rows.index, rep.rows.index)
    ref = x.double().std(1, unbiased=False).numpy()[rep.rows.index]
    np.testing.assert_allclose(rep.rows.std, ref, rtol=1e-12)
    with pytest.raises(GGError, match="2 dims"):
        tensor_shape(torch.randn(10))


def test_parse_granularity() -> None:
    assert parse_granularity("row,col,block:64,row") == ("row", "col", "block:64")
    assert parse_granularity("tensor") == ()
    for bad in ("rows", "block:1", "block:x", ""):
        with pytest.raises(GGError, match="--granularity"):
            parse_granularity(bad)


def test_row_fit_changes_only_the_per_row_beta() -> None:
    """The per-group estimator must not touch what the pass shares (|d| feeds the outliers and the
    pooled tail); 16-bit inputs take the float32 path where that buffer is not a copy."""
    x = (torch.randn(200, 384, generator=gen(9)) * torch.linspace(0.2, 3, 200)[:, None]).bfloat16()
    x[5, 7] = 40.0
    a, b = tensor_shape(x, fit="mle"), tensor_shape(x, fit="moments")
    assert a.outliers.to_dict() == b.outliers.to_dict()
    assert a.pooled.to_dict() == b.pooled.to_dict()
    np.testing.assert_array_equal(a.rows.std, b.rows.std)
    # Same data, two efficient-ish estimators: per-row β agree to their own noise (SE ≈ 0.2 per row).
    assert abs(np.median(a.rows.beta) - np.median(b.rows.beta)) < 0.05


def test_pooled_mle_uses_every_value(minilm_dir) -> None:
    """Pooled β of a real, outlier-heavy matrix (MiniLM layer 0 MLP down-projection, 39σ rows) equals
    the float64 MLE over every normalized value."""
    from ggcompress.io.checkpoint import open_checkpoint

    w = open_checkpoint(minilm_dir).get("encoder.layer.0.output.dense.weight")
    rep = tensor_shape(w, ("row",))
    x = w.double()
    z = ((x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True)).reshape(-1)
    ref = gg.fit_mle(z, mu=0.0, max_samples=None)
    # The ln|z| histogram moves the likelihood sums by ~1e-7 relative; both Newton loops stop within
    # ~1e-5 of the optimum. 1e-4 absolute on β is the sum with margin.
    assert rep.pooled.beta == pytest.approx(ref.beta, abs=1e-4)
    assert rep.pooled.alpha == pytest.approx(ref.alpha, rel=1e-4)
    assert rep.pooled.kurtosis == pytest.approx(stats.kurtosis(z.numpy()), rel=1e-9)

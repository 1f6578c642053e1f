"""GG math and fitting (ggcompress.stats.gg) against scipy.stats.gennorm, float64 references and theory."""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy import special, stats

from ggcompress.errors import GGError
from ggcompress.stats import gg

BETAS = [0.3, 0.5, 1.0, 1.5, 2.0, 3.0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crb_se(beta: float, n: float) -> float:
    """Cramér–Rao standard error of β from n GG values (α unknown; μ is orthogonal by symmetry).

    Closed form via G = (|x|/α)^β ~ Gamma(1/β): scores s_β = 1/β + ψ(1/β)/β² − G·lnG/β, s_α = βG − 1.
    """
    a = 1 / beta
    e_gl = a * special.digamma(a + 1)
    e_g2l = a * (a + 1) * special.digamma(a + 2)
    e_g2l2 = a * (a + 1) * (special.polygamma(1, a + 2) + special.digamma(a + 2) ** 2)
    v_b = (e_g2l2 - e_gl**2) / beta**2
    cov = -(e_g2l - e_gl * a)
    v_a = beta
    return math.sqrt(v_a / (v_b * v_a - cov**2) / n)


def moment_se(beta: float, n: float) -> float:
    """Delta-method standard error of the moment-ratio β (ρ̂ = E x²/E|x|²) from n GG values."""
    m1, m2, m3, m4 = (math.gamma((k + 1) / beta) / math.gamma(1 / beta) for k in (1, 2, 3, 4))
    cov = np.array([[m2 - m1 * m1, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2 * m2]])
    grad = np.array([-2 * m2 / m1**3, 1 / m1**2])
    h = 1e-6
    drho = (gg.rho(beta + h) - gg.rho(beta - h)) / (2 * h)
    return math.sqrt(grad @ cov @ grad / n) / abs(drho)


# --------------------------------------------------------------------------- closed forms vs scipy


@pytest.mark.parametrize("beta", [0.3, 0.7, 1.0, 1.5, 2.0, 3.0, 6.0])
@pytest.mark.parametrize("alpha", [0.01, 1.0, 5.0])
def test_density_and_cdf_match_scipy(beta: float, alpha: float) -> None:
    mu = 0.3
    x = mu + alpha * np.concatenate([-np.geomspace(1e-6, 30, 60), [0.0], np.geomspace(1e-6, 30, 60)])
    ref = stats.gennorm(beta, loc=mu, scale=alpha)
    # Same formula, independent code, float64 end to end: agreement to rounding (1e-12 relative).
    np.testing.assert_allclose(gg.logpdf(x, beta, alpha, mu), ref.logpdf(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gg.pdf(x, beta, alpha, mu), ref.pdf(x), rtol=1e-12, atol=0)
    # Incomplete-gamma tails: both sides use the upper Q, so even F ~ 1e-200 matches to 1e-10.
    np.testing.assert_allclose(gg.cdf(x, beta, alpha, mu), ref.cdf(x), rtol=1e-10, atol=0)
    xt = torch.from_numpy(x)
    # torch's lgamma/gammaincc are separate float64 implementations (Cephes ports): ~1e-12 relative.
    np.testing.assert_allclose(gg.logpdf(xt, beta, alpha, mu).numpy(), ref.logpdf(x), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(gg.cdf(xt, beta, alpha, mu).numpy(), ref.cdf(x), rtol=1e-9, atol=1e-300)
    assert gg.pdf(xt.float(), beta, alpha, mu).dtype == torch.float32
    assert isinstance(gg.pdf(0.1, beta, alpha), float)


@pytest.mark.parametrize("beta", [0.3, 0.7, 1.0, 1.5, 2.0, 3.0, 6.0])
def test_entropy_variance_kurtosis_match_scipy(beta: float) -> None:
    for alpha in (0.02, 1.0, 7.0):
        ref = stats.gennorm(beta, scale=alpha)
        assert gg.entropy(beta, alpha) == pytest.approx(float(ref.entropy()), rel=1e-12, abs=1e-12)
        assert gg.variance(beta, alpha) == pytest.approx(float(ref.var()), rel=1e-12)
        assert gg.std_from_alpha(alpha, beta) == pytest.approx(float(ref.std()), rel=1e-12)
        assert gg.alpha_from_std(float(ref.std()), beta) == pytest.approx(alpha, rel=1e-12)
    assert gg.excess_kurtosis(beta) == pytest.approx(float(stats.gennorm(beta).stats(moments="k")), rel=1e-10)
    betas = np.array([0.5, 2.0])
    ref = [stats.gennorm(b).entropy() for b in betas]
    np.testing.assert_allclose(gg.entropy(betas, 1.0), ref, rtol=1e-12)


# --------------------------------------------------------------------------- ρ(β) and its inverse


def test_rho_known_values_and_scipy_moments() -> None:
    assert gg.rho(0.5) == pytest.approx(10 / 3, rel=1e-14)  # Γ(2)Γ(6)/Γ(4)² = 120/36
    assert gg.rho(1.0) == pytest.approx(2.0, rel=1e-14)
    assert gg.rho(2.0) == pytest.approx(math.pi / 2, rel=1e-14)
    for beta in (0.3, 1.3, 4.0):
        d = stats.gennorm(beta)
        e_abs = d.expect(abs, epsabs=1e-13, epsrel=1e-12)
        assert gg.rho(beta) == pytest.approx(d.var() / e_abs**2, rel=1e-8)  # quad accuracy


def test_beta_from_ratio_round_trip_vectorized() -> None:
    betas = np.geomspace(0.05, 8.0, 301).reshape(7, 43)
    got, clamped = gg.beta_from_ratio(gg.rho(betas))
    assert got.shape == betas.shape and not clamped.any()
    np.testing.assert_allclose(got, betas, rtol=1e-10)  # root-finder converges to ~1e-13
    inner = np.linspace(0.1, 4.0, 200)
    np.testing.assert_allclose(gg.beta_from_ratio(gg.rho(inner), 0.1, 4.0)[0], inner, rtol=1e-10)


def test_beta_from_ratio_clamps_and_flags() -> None:
    b, c = gg.beta_from_ratio(np.array([1.2, gg.rho(3.0), 2 * gg.rho(0.1), np.nan]), lo=0.1, hi=4.0)
    assert b[0] == 4.0 and c[0]  # below ρ(4): flatter than β=4 allows (ρ → 4/3 only as β → ∞)
    assert b[1] == pytest.approx(3.0, rel=1e-10) and not c[1]
    assert b[2] == 0.1 and c[2]
    assert math.isnan(b[3]) and not c[3]
    assert gg.beta_from_ratio(2.0) == (pytest.approx(1.0, rel=1e-12), False)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.0, 5.0])
def test_sample_matches_gennorm_ks(beta: float) -> None:
    alpha, mu = 0.05, -0.2
    x = gg.sample(20_000, beta, alpha, mu=mu, generator=gen(1), dtype=torch.float64)
    # A wrong exponent or scale gives KS ~0.05+ (p ≈ 0); a correct sampler gives p ~ U(0, 1).
    assert stats.kstest(x.numpy(), stats.gennorm(beta, loc=mu, scale=alpha).cdf).pvalue > 1e-3


def test_sample_is_seeded_and_validates() -> None:
    a = gg.sample((3, 1000), 1.5, 2.0, generator=gen(7))
    b = gg.sample((3, 1000), 1.5, 2.0, generator=gen(7))
    assert a.shape == (3, 1000) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, gg.sample((3, 1000), 1.5, 2.0, generator=gen(8)))
    assert gg.sample(10, 1.0, dtype=torch.bfloat16, generator=gen(0)).dtype == torch.bfloat16
    with pytest.raises(GGError, match="beta"):
        gg.sample(10, -1.0, 1.0)
    with pytest.raises(GGError, match="alpha"):
        gg.sample(10, 1.0, 0.0)


# --------------------------------------------------------------------------- β recovery


@pytest.mark.parametrize("beta", BETAS)
def test_beta_recovery_on_1e6_samples(beta: float) -> None:
    n = 10**6
    x = gg.sample(n, beta, 0.02, generator=gen(int(beta * 10)))
    m = gg.Moments().update(x)
    mle = gg.fit(x, "mle", moments=m, max_samples=None)
    # The spec asks for 0.01. No estimator can promise that where the Cramér–Rao SE is above 0.01/3
    # (β = 2: 0.0045, β = 3: 0.0077 at n = 1e6), so the bound there is 3 SE of an efficient estimator.
    assert abs(mle.beta - beta) <= max(0.01, 3 * crb_se(beta, n)), mle
    assert mle.alpha == pytest.approx(0.02, rel=0.01)
    # Default subsample (2^18): 3 SE at that size.
    sub = gg.fit(x, "mle", moments=m)
    assert sub.n_used <= 2**18 + 2**16
    assert abs(sub.beta - beta) <= max(0.01, 3 * crb_se(beta, 2**18)), sub
    # Moment ratio: within 0.01 for β ≤ 1.5 (its delta-method SE there is ≤ 0.0031), else 3 of its SE.
    mom = gg.fit(m)
    assert abs(mom.beta - beta) <= max(0.01, 3 * moment_se(beta, n)), mom
    assert mom.method == "moments" and mle.method == "mle" and not (mom.clamped or mle.clamped)


@pytest.mark.parametrize("beta", [0.5, 1.3, 2.5])
def test_mle_matches_gennorm_fit(beta: float) -> None:
    x = gg.sample(20_000, beta, 0.02, generator=gen(3), dtype=torch.float64)
    xn = x.numpy()
    ref_b, ref_loc, ref_a = stats.gennorm.fit(xn)
    f = gg.fit(x, "mle")
    # Both are MLEs; they differ only in the location (gennorm fits it jointly; we use the mean, or the
    # median for β < 1) and gennorm's Nelder–Mead tolerance: measured ≤ 0.0016 over 24 seeded cases,
    # while the SE of β itself at n = 2e4 is 0.006-0.05, so a wrong likelihood would show.
    assert abs(f.beta - ref_b) <= 0.005
    nll = -stats.gennorm.logpdf(xn, f.beta, loc=f.mu, scale=f.alpha).mean()
    ref_nll = -stats.gennorm.logpdf(xn, ref_b, loc=ref_loc, scale=ref_a).mean()
    assert nll <= ref_nll + 1e-3  # as likely as scipy's optimum (1e-3 nats: its extra location freedom)
    assert f.alpha == pytest.approx(ref_a, rel=0.02)


def test_mle_on_real_weights_matches_gennorm(minilm_dir) -> None:
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as fh:
        small = fh.get_tensor("encoder.layer.0.attention.self.query.weight")  # 147k values: all used
        big = fh.get_tensor("encoder.layer.0.output.dense.weight")  # 590k: subsampled, one 175σ outlier
    for w in (small, big):
        ref_b = stats.gennorm.fit(w.double().numpy())[0]
        f = gg.fit(w, "mle")
        assert abs(f.beta - ref_b) <= 0.02, (f, ref_b)  # the benchmark target; measured ≤ 0.004
    assert gg.fit(small, "mle").n_used == small.numel()
    assert gg.fit(big, "mle").n_used < big.numel()


# --------------------------------------------------------------------------- goodness of fit


@pytest.mark.parametrize(
    "beta, family", [(2.0, "gaussian"), (1.0, "laplace"), (0.5, "gg"), (1.5, "gg"), (2.6, "gg")]
)
def test_goodness_of_fit_picks_the_family(beta: float, family: str) -> None:
    x = gg.sample(200_000, beta, 0.03, mu=0.01, generator=gen(11))
    q = gg.goodness_of_fit(x, gg.fit(x, "mle"))
    assert q.best_bic == family, q
    assert q.best == min(q.nll, key=q.nll.get)
    # The GG nests both others: at its MLE it is never worse than either by more than noise.
    assert q.nll["gg"] <= min(q.nll["gaussian"], q.nll["laplace"]) + 1e-5
    assert q.ks[family] < 0.005 and q.ks_resolution < 1e-3  # 0.005 ≈ 2.2/sqrt(n): a true model's KS


def test_goodness_of_fit_against_scipy() -> None:
    x = gg.sample(50_000, 0.8, 0.02, generator=gen(5), dtype=torch.float64)
    xn = x.numpy()
    f = gg.fit(x, "mle")
    q = gg.goodness_of_fit(x, f)
    med = np.median(xn)
    b = np.mean(np.abs(xn - med))
    alpha_e = (f.beta * np.mean(np.abs(xn - f.mu) ** f.beta)) ** (1 / f.beta)
    models = {
        "gaussian": stats.norm(xn.mean(), xn.std()),
        "laplace": stats.laplace(med, b),
        "gg": stats.gennorm(f.beta, loc=f.mu, scale=alpha_e),
    }
    for fam, d in models.items():
        assert q.nll[fam] == pytest.approx(-d.logpdf(xn).mean(), rel=1e-9)  # all values used: exact MLE
        exact = stats.kstest(xn, d.cdf).statistic
        # Edge-evaluated KS is a lower bound of the exact one, by at most one bin's mass.
        assert exact - q.ks_resolution - 1e-12 <= q.ks[fam] <= exact + 1e-12
    assert q.n_nll == q.n_ks == 50_000


def test_goodness_of_fit_subsampled_tracks_full() -> None:
    x = gg.sample(400_000, 1.2, 0.02, generator=gen(9))
    x[123] = 60 * x.std()  # one outlier: the stratified subsample must carry it exactly
    f = gg.fit(x, "mle", max_samples=None)
    full = gg.goodness_of_fit(x, f, max_samples=None)
    sub = gg.goodness_of_fit(x, f, max_samples=2**14, generator=gen(2))
    assert sub.n_nll <= 1.25 * 2**14 and full.n_nll == 400_000  # bulk draws + at most m/4 tail values
    for fam in gg.FAMILIES:
        # Bulk sampling noise of a mean log-density over ~1.5e4 values: sd(log p) ≈ 0.75 → SE ≈ 0.006.
        assert sub.nll[fam] == pytest.approx(full.nll[fam], abs=0.02)
        # The KS histogram always covers every value; only the fitted parameters differ (noise).
        assert sub.ks[fam] == pytest.approx(full.ks[fam], abs=0.01)
    assert sub.n_ks == full.n_ks == 400_000
    assert gg.fit(x, "mle", max_samples=2**14).beta == pytest.approx(f.beta, abs=0.05)


# --------------------------------------------------------------------------- streaming moments


def reference(x: torch.Tensor) -> dict:
    v = x.double().numpy()
    v = v[np.isfinite(v)]
    return {
        "mean": v.mean(),
        "var": v.var(),
        "abs_dev": np.abs(v - v.mean()).mean(),
        "skewness": stats.skew(v),
        "kurtosis": stats.kurtosis(v),
        "min": v.min(),
        "max": v.max(),
        "zeros": int((v == 0).sum()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 0.05])
def test_moments_match_float64_reference(dtype: torch.dtype, offset: float) -> None:
    x = (gg.sample(600_001, 1.3, 0.02, generator=gen(4)) + offset).to(dtype)
    x[::1000] = 0
    m = gg.Moments().update(x)
    ref = reference(x)
    assert m.count == m.finite == x.numel() and m.nan == m.inf == 0
    assert m.zeros == ref["zeros"] and m.min == ref["min"] and m.max == ref["max"]
    # Sums run in float32 per 2^18-value chunk, then in float64: measured ≤ 3e-8 σ on the mean and
    # ≤ 1e-7 relative on the variance; Σd³, Σd⁴ use float32 BLAS dots: ~1e-5 relative on the kurtosis.
    assert m.mean == pytest.approx(ref["mean"], abs=1e-6 * math.sqrt(ref["var"]))
    assert m.var == pytest.approx(ref["var"], rel=1e-6)
    assert m.skewness == pytest.approx(ref["skewness"], abs=1e-6)
    assert m.kurtosis == pytest.approx(ref["kurtosis"], rel=1e-4)
    # E|x−μ| is summed about the center and shifted to the mean: the documented bound.
    v = x.double()
    lo, hi = sorted((m.center, ref["mean"]))
    between = float(((v > lo) & (v < hi)).double().mean())
    bound = 2 * (hi - lo) * between + 1e-6 * ref["abs_dev"]
    assert abs(m.abs_dev - ref["abs_dev"]) <= bound
    assert m.ratio == pytest.approx(ref["var"] / ref["abs_dev"] ** 2, rel=1e-4)


def test_moments_merge_equals_single_pass() -> None:
    x = gg.sample(500_000, 1.1, 0.02, mu=0.3, generator=gen(6)).double()
    parts = [x[:100_000] + 0.004, x[100_000:350_000], x[350_000:] - 0.002]  # three different centers
    whole = torch.cat(parts)
    ms = [gg.Moments().update(p) for p in parts]
    merged = ms[0].merge(ms[1]).merge(ms[2])
    single = gg.Moments().update(whole)
    assert len({m.center for m in ms}) == 3
    for key in ("count", "finite", "zeros", "nan", "inf", "min", "max"):
        assert getattr(merged, key) == getattr(single, key)
    for key in ("mean", "var", "skewness", "kurtosis"):  # binomial recentering: exact up to rounding
        assert getattr(merged, key) == pytest.approx(getattr(single, key), rel=1e-9)
    # E|x−μ| moves between centers by the gap identity: error ≤ 2|Δc| · (fraction strictly between).
    cs = sorted(m.center for m in ms) + [single.center, single.mean]
    between = float(((whole > min(cs)) & (whole < max(cs))).double().mean())
    assert abs(merged.abs_dev - single.abs_dev) <= 2 * (max(cs) - min(cs)) * between + 1e-15
    # With one fixed center (0 for weights) every sum simply adds: exact up to rounding.
    w = [p - 0.3 for p in parts]
    m0 = [gg.Moments(center=0.0).update(p) for p in w]
    exact = m0[0].merge(m0[1]).merge(m0[2])
    s0 = gg.Moments(center=0.0).update(torch.cat(w))
    assert exact.abs_dev == pytest.approx(s0.abs_dev, rel=1e-12)
    assert gg.fit(exact).beta == pytest.approx(gg.fit(s0).beta, rel=1e-10)
    assert gg.Moments().merge(single).mean == single.mean and single.merge(gg.Moments()).var == single.var


def test_global_fit_over_many_tensors() -> None:
    ts = [gg.sample(s, 1.4, 0.02, generator=gen(i)) for i, s in enumerate((30_000, 200_000, 77_777))]
    acc = gg.Moments(center=0.0)
    for t in ts:
        acc = acc.merge(gg.Moments(center=0.0).update(t))
    # Same center, different chunk boundaries: float32 chunk sums differ by ~1e-7 relative.
    assert gg.fit(acc).beta == pytest.approx(gg.fit(torch.cat(ts)).beta, abs=1e-5)


# --------------------------------------------------------------------------- odd inputs


def test_nan_inf_are_counted_and_ignored() -> None:
    x = gg.sample(300_000, 1.5, 0.02, generator=gen(12))
    x[[5, 70_000, 299_999]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    m = gg.Moments().update(x)
    ref = reference(x)
    assert (m.count, m.nan, m.inf, m.finite) == (300_000, 1, 2, 299_997)
    assert m.var == pytest.approx(ref["var"], rel=1e-6) and m.min == ref["min"]
    clean = x[torch.isfinite(x)]
    for method in ("moments", "mle"):
        f = gg.fit(x, method, max_samples=None)
        assert f.nonfinite == 3 and f.n == 299_997
        # Same values; the start (moment β) differs by float32 chunk rounding and Newton stops ~1e-5 out.
        assert f.beta == pytest.approx(gg.fit(clean, method, max_samples=None).beta, rel=1e-5)
    sub = gg.fit(x, "mle")  # subsample draws that hit NaN/Inf are dropped
    assert sub.n_used <= 1.25 * 2**18 and sub.beta == pytest.approx(1.5, abs=3 * crb_se(1.5, 2**18))
    q = gg.goodness_of_fit(x)
    assert q.n_ks == 299_997 and q.best in gg.FAMILIES


@pytest.mark.parametrize(
    "x",
    [torch.full((1000,), 0.1), torch.full((10,), float("nan")), torch.empty(0), torch.tensor([3.0])],
    ids=["constant", "all-nan", "empty", "single"],
)
def test_degenerate_inputs_do_not_crash(x: torch.Tensor) -> None:
    m = gg.Moments().update(x)
    assert m.count == x.numel()
    for method in ("moments", "mle"):
        f = gg.fit(x, method, moments=m)
        assert not f.ok and math.isnan(f.beta)
    q = gg.goodness_of_fit(x)
    assert q.best == q.best_bic == "none"
    if m.finite:
        assert m.var == 0.0 and m.std == 0.0 and gg.fit(x).alpha == 0.0


def test_extreme_scales_and_integer_input() -> None:
    x = gg.sample(100_000, 0.9, 1.0, generator=gen(13))
    base = gg.fit(x, "mle").beta
    for scale in (1e-30, 1e-8, 1e25):  # float32 x⁴ under/overflows here: float64 fallback chunks
        y = x * scale
        assert gg.fit(y).beta == pytest.approx(gg.fit(x).beta, rel=1e-5)
        assert gg.fit(y, "mle").beta == pytest.approx(base, rel=1e-4)
    m = gg.Moments().update(torch.tensor([1, 2, 3, 4]))
    assert m.mean == 2.5 and m.var == 1.25
    with pytest.raises(ValueError, match="moments"):
        gg.fit(gg.Moments().update(x), "mle")
    with pytest.raises(ValueError, match="method"):
        gg.fit(x, "lsq")


def test_clamped_shape_is_flagged() -> None:
    u = torch.rand(100_000, generator=gen(14)) * 2 - 1  # uniform: β → ∞, beyond any range
    f = gg.fit(u, "mle", hi=4.0)
    assert f.clamped and f.beta == pytest.approx(4.0, rel=1e-3)
    assert gg.fit(u, hi=4.0).clamped


@pytest.mark.parametrize("beta", [0.6, 1.7])
def test_fit_with_quality_matches_separate_calls(beta: float) -> None:
    x = gg.sample(600_000, beta, 0.02, generator=gen(3))
    f1, q1 = gg.fit_with_quality(x, max_samples=2**16, generator=gen(9))
    f2 = gg.fit_mle(x, max_samples=2**16, generator=gen(9))
    q2 = gg.goodness_of_fit(x, f2, max_samples=2**16, generator=gen(9))
    assert f1 == f2  # same subsample, same fit
    # The NLL set is stratified at the moment fit's tail quantile instead of the MLE's: a different,
    # equally valid estimate of the same means; 2e-3 nats is ~10 standard errors at 2^16 values.
    for fam in q1.nll:
        assert q1.nll[fam] == pytest.approx(q2.nll[fam], abs=2e-3)
        assert q1.ks[fam] == pytest.approx(q2.ks[fam], abs=q1.ks_resolution + q2.ks_resolution + 1e-3)
    assert q1.best_bic == q2.best_bic


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_value_counts_reproduce_moments_and_histograms(dtype: torch.dtype) -> None:
    x = (gg.sample(300_000, 1.3, 0.05, generator=gen(4)) * (8 if dtype == torch.float8_e4m3fn else 1)).to(
        dtype
    )
    if dtype in (torch.bfloat16, torch.float16):
        x[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0]).to(dtype)
    vals, counts = gg.value_counts(x)
    bits = x.view(torch.int16 if x.element_size() == 2 else torch.uint8)
    assert int(counts.sum()) == x.numel() and vals.numel() == torch.unique(bits).numel()
    ref = x.double()
    fin = ref[torch.isfinite(ref)]
    m = gg.Moments().update_counts(vals, counts)
    m0 = gg.Moments().update(x)
    assert (m.count, m.nan, m.inf, m.zeros) == (m0.count, m0.nan, m0.inf, m0.zeros)
    # Counts give float64 sums over distinct values: ~1e-12 relative to a float64 reference. The
    # streaming path sums 2^18-value chunks in float32 (pairwise: ~log2(2^18)·2^-24 ≈ 1e-6 relative).
    d = fin - fin.mean()
    ref_abs, ref_kurt = float(d.abs().mean()), float((d**4).mean() / (d**2).mean() ** 2 - 3)
    assert m.mean == pytest.approx(float(fin.mean()), rel=1e-9, abs=1e-15)
    assert m.std == pytest.approx(float(fin.std(correction=0)), rel=1e-9)
    # E|x−μ| is shifted from the sums about the center c by the |x−μ| = |x−c| ± (μ−c) identity,
    # exact except for values between c and μ: second order, ~1e-6 relative (see Moments).
    assert m.abs_dev == pytest.approx(ref_abs, rel=1e-5)
    assert m.kurtosis == pytest.approx(ref_kurt, rel=1e-9)
    assert m0.abs_dev == pytest.approx(ref_abs, rel=1e-5)
    if m.nan == 0:
        f = gg.fit(x, "mle", moments=m0)
        q0 = gg.goodness_of_fit(x, f, moments=m0, generator=gen(1))
        q1 = gg.goodness_of_fit(x, f, moments=m0, generator=gen(1), counts_of=(vals, counts))
        assert q0.ks == q1.ks  # the same histogram, built from counts instead of a pass


def test_value_counts_is_none_for_wide_floats() -> None:
    assert (
        gg.value_counts(torch.zeros(3)) is None
        and gg.value_counts(torch.zeros(3, dtype=torch.float64)) is None
    )


@pytest.mark.parametrize("beta", [0.7, 1.6])
def test_fit_with_counts_is_the_exact_mle_on_all_values(beta: float) -> None:
    x = gg.sample(400_000, beta, 0.03, generator=gen(8)).to(torch.bfloat16)
    f_all = gg.fit_mle(x, max_samples=None)  # every value, no subsample
    f_cnt, q_cnt = gg.fit_with_quality(x, counts_of=gg.value_counts(x))
    q_all = gg.goodness_of_fit(x, f_all, max_samples=None)
    # Same likelihood, summed per distinct value instead of per value: equal to rounding.
    assert f_cnt.beta == pytest.approx(f_all.beta, rel=1e-6) and f_cnt.n_used == x.numel()
    for fam in q_all.nll:
        assert q_cnt.nll[fam] == pytest.approx(q_all.nll[fam], rel=1e-6)

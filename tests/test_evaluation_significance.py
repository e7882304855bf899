"""boom_jax.evaluation.significance on synthetic scores whose answer is known."""

import math

import numpy as np
import pytest

from boom_jax.evaluation import significance as sig


@pytest.mark.parametrize("df, expected", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (100, 1.983972)])
def test_t_quantile_matches_tables(df, expected):
    assert sig.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-5)
    assert sig.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-5)


def test_seed_interval_is_the_t_interval():
    iv = sig.seed_interval([0.50, 0.52, 0.54])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (iv.mean, iv.n, iv.method) == (pytest.approx(0.52), 3, "t")
    assert (iv.low, iv.high) == (pytest.approx(0.52 - half), pytest.approx(0.52 + half))
    one = sig.seed_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)


def test_seed_interval_coverage_near_95_percent():
    rng = np.random.default_rng(1)
    hits = sum(iv.low <= 0.5 <= iv.high for iv in (sig.seed_interval(rng.normal(0.5, 0.03, 3)) for _ in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_identical_strategies_give_zero_difference_and_p_one():
    a = np.random.default_rng(2).uniform(size=(3, 80))
    c = sig.paired_bootstrap(a, a.copy(), n_resamples=2000, seed=0)
    assert (c.difference, c.low, c.high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not sig.excludes_zero(c)


def test_large_shift_excludes_zero_with_small_p():
    rng = np.random.default_rng(3)
    b = rng.uniform(size=(3, 200))
    a = b + 0.1 + rng.normal(0, 0.05, size=b.shape)
    c = sig.paired_bootstrap(a, b, n_resamples=2000, seed=0)
    assert c.difference == pytest.approx(0.1, abs=0.01)
    assert 0 < c.low < c.difference < c.high
    assert c.p_value < 0.001
    assert sig.excludes_zero(c) and sig.format_difference(c).endswith("*")
    assert sig.excludes_zero(sig.paired_bootstrap(b, a, n_resamples=500))  # and the other way round
    assert sig.paired_bootstrap(b, a, n_resamples=500).difference < 0


def test_no_shift_is_not_marked_and_p_is_large_on_average():
    rng = np.random.default_rng(4)
    ps = []
    for k in range(20):
        item = rng.normal(0, 0.2, 150)
        a, b = item + rng.normal(0, 0.1, (3, 150)), item + rng.normal(0, 0.1, (3, 150))
        ps.append(sig.paired_bootstrap(a, b, n_resamples=500, seed=k).p_value)
    assert np.mean(ps) > 0.3  # uniform under the null: mean 0.5


def test_bootstrap_interval_coverage_near_95_percent():
    """A true shift of 0.03 on shared item difficulty, 3 seeds with a small seed effect, 200 draws."""
    rng = np.random.default_rng(5)
    delta, hits = 0.03, 0
    for k in range(200):
        item = rng.normal(0, 0.2, 300)
        a = item + delta + rng.normal(0, 0.01, (3, 1)) + rng.normal(0, 0.1, (3, 300))
        b = item + rng.normal(0, 0.01, (3, 1)) + rng.normal(0, 0.1, (3, 300))
        c = sig.paired_bootstrap(a, b, n_resamples=400, seed=k)
        hits += c.low <= delta <= c.high
    assert 0.88 <= hits / 200 <= 0.99


def test_seeded_bootstrap_is_deterministic():
    rng = np.random.default_rng(6)
    a, b = rng.uniform(size=(3, 60)), rng.uniform(size=(3, 60))
    assert sig.paired_bootstrap(a, b, seed=7, n_resamples=300) == sig.paired_bootstrap(a, b, seed=7, n_resamples=300)
    assert sig.paired_bootstrap(a, b, seed=7, n_resamples=300) != sig.paired_bootstrap(a, b, seed=8, n_resamples=300)


def test_unpaired_seeds_and_shape_checks():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(size=(2, 40)), rng.uniform(size=(4, 40))
    c = sig.paired_bootstrap(a, b, n_resamples=300, pair_seeds=False)
    assert c.difference == pytest.approx(a.mean() - b.mean())
    with pytest.raises(ValueError, match="equal seed counts"):
        sig.paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="same items"):
        sig.paired_bootstrap(a, b[:, :30], pair_seeds=False)


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / max(1, hits.sum()))


def test_metric_bootstrap_for_average_precision():
    """A separates the classes, B is noise: AP(A) - AP(B) is large and its interval excludes zero;
    A against itself gives exactly zero."""
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 120)
    good = [labels + rng.normal(0, 0.5, 120) for _ in range(3)]
    noise = [rng.normal(0, 1, 120) for _ in range(3)]
    ap = lambda scores: (lambda s, idx: _average_precision(labels[idx], scores[s][idx]))
    c = sig.paired_bootstrap_metric(ap(good), ap(noise), n_items=120, n_seeds=3, n_resamples=200, seed=0)
    assert c.difference > 0.2 and sig.excludes_zero(c) and c.p_value < 0.01
    same = sig.paired_bootstrap_metric(ap(good), ap(good), n_items=120, n_seeds=3, n_resamples=50)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    again = sig.paired_bootstrap_metric(ap(good), ap(noise), n_items=120, n_seeds=3, n_resamples=200, seed=0)
    assert again == c


def test_mark_significant_names_each_comparison():
    shifted = sig.Comparison(0.02, 0.01, 0.03, 0.001, 100, 0.95)
    overlapping = sig.Comparison(0.01, -0.01, 0.03, 0.4, 100, 0.95)
    assert sig.mark_significant({"boom": shifted, "merge": overlapping}) == {"boom": True, "merge": False}
    assert sig.format_difference(overlapping) == "+1.00 [-1.00, +3.00]"

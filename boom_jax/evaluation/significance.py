"""Statistics for comparing training strategies: intervals over seeds and paired bootstraps over items.

Pure NumPy (and the standard library), no project imports, so any layer may use it.

- `seed_interval(scores)`: mean of per-seed scores and its Student-t interval (exact for normally
  distributed seed scores; with n = 3 seeds the t quantile is 4.30, not 1.96).
- `paired_bootstrap(a, b)`: A - B for per-item scores `[seeds, items]` (the same items for both), seeds
  and items resampled with replacement (the same item draws for A and B: paired), giving the observed
  difference of means, its percentile interval and a two-sided p-value.
- `paired_bootstrap_metric(metric_a, metric_b, ...)`: the same for a metric that is not a mean of item
  scores (V-measure, average precision): `metric(seed, item_indices)` is computed on every resample.
- `excludes_zero(comparison)` / `format_difference(comparison)`: mark the differences whose interval
  excludes zero.

Resampling both seeds and items (a two-stage bootstrap) carries both sources of variance into the
interval. With few seeds the seed stage is rough (a bootstrap of 3 values understates their spread),
so when seed-to-seed variation dominates, prefer `seed_interval` on the per-seed differences; the tests
measure the coverage of both on synthetic scores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

DEFAULT_RESAMPLES = 10_000
_CHUNK = 1_000


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval; `low` / `high` are NaN when n < 2 (no spread to estimate)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A - B: the observed difference, its bootstrap percentile interval and two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    n_resamples: int
    confidence: float


# ----------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student t cumulative distribution function."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf` (bisection to 1e-12), e.g. t_quantile(0.975, 2) = 4.3027."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


# ----------------------------------------------------------------------------- over seeds


def seed_interval(scores, confidence: float = 0.95) -> Interval:
    """Mean of one score per seed and its Student-t interval: mean +- t_{n-1} * sd / sqrt(n)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("seed_interval needs at least one score")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"scores must be finite, got {x.tolist()}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, 1, confidence, "t")
    half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size), confidence, "t")


# ----------------------------------------------------------------------------- paired bootstrap


def _as_seed_items(scores, name: str) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be [seeds, items] (or [items]) and non-empty, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite scores")
    return x


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[size, n] multiplicities of one bootstrap draw of n indices each."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def _summarize(observed: float, resampled: np.ndarray, confidence: float) -> Comparison:
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2.0, 1.0 - alpha / 2.0])
    # two-sided p: how often the resampled difference, centred on the observed one (the null's shape),
    # lies at least as far from zero as the observed difference; +1 so that p is never 0.
    extreme = np.abs(resampled - observed) >= abs(observed) - 1e-12
    p = (int(extreme.sum()) + 1) / (resampled.size + 1)
    return Comparison(float(observed), float(low), float(high), float(min(1.0, p)), int(resampled.size), confidence)


def paired_bootstrap(a, b, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = 0.95,
                     pair_seeds: bool = True) -> Comparison:
    """A - B for mean item scores, `a` and `b` `[seeds, items]` over the same items in the same order.

    Every resample draws the items with replacement (the same draw for A and B) and the seeds with
    replacement (the same seed indices for A and B when `pair_seeds`, which needs equal seed counts:
    seed k of A and seed k of B share their data order; independently otherwise), and takes the
    difference of the grand means.
    """
    a, b = _as_seed_items(a, "a"), _as_seed_items(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must score the same items: {a.shape[1]} vs {b.shape[1]} items")
    if pair_seeds and a.shape[0] != b.shape[0]:
        raise ValueError(f"pair_seeds needs equal seed counts, got {a.shape[0]} and {b.shape[0]}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n_items = a.shape[1]
    out = []
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        items = _counts(rng, n_items, size) / n_items
        seeds_a = _counts(rng, a.shape[0], size) / a.shape[0]
        seeds_b = seeds_a if pair_seeds else _counts(rng, b.shape[0], size) / b.shape[0]
        out.append(np.sum((seeds_a @ a - seeds_b @ b) * items, axis=1))
    return _summarize(float(a.mean() - b.mean()), np.concatenate(out), confidence)


def paired_bootstrap_metric(metric_a: Callable[[int, np.ndarray], float], metric_b: Callable[[int, np.ndarray], float],
                            n_items: int, n_seeds: int, n_resamples: int = 1_000, seed: int = 0,
                            confidence: float = 0.95) -> Comparison:
    """A - B for a metric that is not a mean over items: `metric_x(seed_index, item_indices) -> score`.

    `item_indices` is an int array of length `n_items` (a draw with replacement; `np.arange(n_items)`
    for the observed value); the metric sees the repeated items repeated. Seeds are resampled paired
    (the same indices for A and B), the metric being computed once per distinct seed of a resample.
    Cost: n_resamples * (distinct seeds) metric calls per strategy.
    """
    if n_items < 1 or n_seeds < 1 or n_resamples < 1:
        raise ValueError(f"n_items, n_seeds and n_resamples must be >= 1, got {n_items}, {n_seeds}, {n_resamples}")
    everything = np.arange(n_items)
    observed = float(np.mean([metric_a(s, everything) - metric_b(s, everything) for s in range(n_seeds)]))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for r in range(n_resamples):
        items = np.sort(rng.integers(0, n_items, size=n_items))
        seeds, counts = np.unique(rng.integers(0, n_seeds, size=n_seeds), return_counts=True)
        per_seed = np.array([metric_a(int(s), items) - metric_b(int(s), items) for s in seeds])
        diffs[r] = float(np.dot(per_seed, counts) / n_seeds)
    if not np.all(np.isfinite(diffs)):
        raise ValueError("the metric returned non-finite values on some resamples")
    return _summarize(observed, diffs, confidence)


# ----------------------------------------------------------------------------- marks


def excludes_zero(comparison: Comparison) -> bool:
    """True when the interval lies wholly above or wholly below zero (the difference is 'significant')."""
    return comparison.low > 0.0 or comparison.high < 0.0


def format_difference(comparison: Comparison, scale: float = 100.0, digits: int = 2, mark: str = "*") -> str:
    """'+1.23 [+0.40, +2.05]*' (scaled, e.g. to points): `mark` appended when the interval excludes zero."""
    fmt = lambda v: f"{v * scale:+.{digits}f}"
    text = f"{fmt(comparison.difference)} [{fmt(comparison.low)}, {fmt(comparison.high)}]"
    return text + (mark if excludes_zero(comparison) else "")


def mark_significant(comparisons: Mapping[str, Comparison]) -> dict[str, bool]:
    """name -> whether that comparison's interval excludes zero (for tables that mark such rows)."""
    return {name: excludes_zero(c) for name, c in comparisons.items()}


# ----------------------------------------------------------------------------- several tasks, several models


@dataclasses.dataclass(frozen=True)
class GroupBootstrap:
    """Bootstrap of task-group means (e.g. in-domain, out-of-domain) for several models at once.

    `observed[model][group]`: the mean over the group's tasks of each task's metric on all its items,
    averaged over the model's seeds. `resampled[model][group]`: the same on every resample; all models
    share the resamples (the same seeds and the same items), so differences between models are paired.
    """

    observed: dict[str, dict[str, float]]
    resampled: dict[str, dict[str, np.ndarray]]
    confidence: float = 0.95

    def interval(self, model: str, group: str) -> Interval:
        """The model's group mean and its percentile interval over items and seeds."""
        alpha = 1.0 - self.confidence
        values = self.resampled[model][group]
        low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
        return Interval(self.observed[model][group], float(low), float(high), int(values.size), self.confidence,
                        "bootstrap")

    def compare(self, a: str, b: str, group: str) -> Comparison:
        """A - B on the group mean: observed difference, paired percentile interval, two-sided p-value."""
        return _summarize(self.observed[a][group] - self.observed[b][group],
                          self.resampled[a][group] - self.resampled[b][group], self.confidence)


def bootstrap_groups(models: Mapping[str, Sequence[Mapping[str, Callable[[np.ndarray], float]]]],
                     n_items: Mapping[str, int], groups: Mapping[str, Sequence[str]],
                     n_resamples: int = 2_000, seed: int = 0, confidence: float = 0.95) -> GroupBootstrap:
    """Two-stage bootstrap of group means: every resample draws the seeds (with replacement, shared by
    all models) and, per task, its items (with replacement, shared by all models and seeds).

    `models[label]`: one {task: metric(item_indices) -> score} per seed (seed k of every model shares
    its data order); a model with ONE entry (e.g. the pretrained model) has no seed variance and uses it
    for every seed. `n_items[task]`: the task's item count. `groups`: name -> tasks (a group's value is
    the plain mean over its tasks, as the report's in-domain / out-of-domain means are).
    """
    if not models:
        raise ValueError("bootstrap_groups needs at least one model")
    counts = {len(per_seed) for per_seed in models.values()} - {1}
    if len(counts) > 1:
        raise ValueError(f"models must have the same number of seeds (or one), got {sorted(counts)}")
    n_seeds = counts.pop() if counts else 1
    tasks = sorted({t for names in groups.values() for t in names})
    missing = [(m, t) for m, per_seed in models.items() for s in per_seed for t in tasks if t not in s]
    if missing:
        raise ValueError(f"no item scores for (model, task) {missing[:5]}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    def group_values(seed_counts: np.ndarray, draws: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
        out = {}
        for label, per_seed in models.items():
            weights = seed_counts if len(per_seed) > 1 else np.array([seed_counts.sum()])
            used = np.nonzero(weights)[0]
            task_score = {t: float(sum(weights[s] * per_seed[s][t](draws[t]) for s in used) / weights.sum())
                          for t in tasks}
            out[label] = {g: float(np.mean([task_score[t] for t in names])) for g, names in groups.items()}
        return out

    observed = group_values(np.ones(n_seeds), {t: np.arange(n_items[t]) for t in tasks})
    rng = np.random.default_rng(seed)
    resampled = {label: {g: np.empty(n_resamples) for g in groups} for label in models}
    for r in range(n_resamples):
        seed_counts = np.bincount(rng.integers(0, n_seeds, size=n_seeds), minlength=n_seeds).astype(np.float64)
        draws = {t: rng.integers(0, n_items[t], size=n_items[t]) for t in tasks}
        for label, by_group in group_values(seed_counts, draws).items():
            for g, v in by_group.items():
                resampled[label][g][r] = v
    return GroupBootstrap(observed, resampled, confidence)

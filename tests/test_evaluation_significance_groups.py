"""bootstrap_groups: paired two-stage bootstrap of task-group means, on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from boom_jax.evaluation.items import item_metric
from boom_jax.evaluation.significance import bootstrap_groups, excludes_zero


def _metrics(per_task_scores: dict[str, np.ndarray]) -> dict:
    return {t: item_metric({"kind": "mean", "scores": s.tolist()})[1] for t, s in per_task_scores.items()}


def test_a_constant_shift_is_found_exactly_and_identical_models_tie():
    rng = np.random.default_rng(0)
    base = [{t: rng.uniform(0, 1, n) for t, n in (("r1", 30), ("r2", 40), ("c1", 25))} for _ in range(3)]
    models = {"a": [_metrics(s) for s in base],
              "b": [_metrics({t: v + 0.02 for t, v in s.items()}) for s in base],
              "same": [_metrics(s) for s in base]}
    groups = {"in": ["r1", "r2"], "out": ["c1"], "all": ["r1", "r2", "c1"]}
    boot = bootstrap_groups(models, {"r1": 30, "r2": 40, "c1": 25}, groups, n_resamples=300)
    for g in groups:
        shift = boot.compare("b", "a", g)
        assert shift.difference == pytest.approx(0.02) and shift.low == pytest.approx(0.02)
        assert shift.high == pytest.approx(0.02) and excludes_zero(shift) and shift.p_value < 0.01
        tie = boot.compare("same", "a", g)
        assert tie.difference == 0 and tie.low == tie.high == 0 and not excludes_zero(tie) and tie.p_value == 1.0
    # a group's value is the plain mean of its tasks' means, averaged over seeds
    expected = np.mean([np.mean([s["r1"].mean(), s["r2"].mean()]) for s in base])
    assert boot.observed["a"]["in"] == pytest.approx(expected)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(200):
        scores = rng.normal(0.6, 0.2, 60)
        boot = bootstrap_groups({"m": [_metrics({"t": scores})]}, {"t": 60}, {"all": ["t"]}, n_resamples=300, seed=rep)
        iv = boot.interval("m", "all")
        hits += iv.low <= 0.6 <= iv.high
        assert iv.mean == pytest.approx(scores.mean())
    assert 0.88 <= hits / 200 <= 0.99


def test_pairing_removes_the_item_difficulty_and_seeds_add_their_spread():
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0, 1, 80)  # large spread between items, shared by both models
    a = [_metrics({"t": difficulty + rng.normal(0, 0.01, 80)}) for _ in range(3)]
    b = [_metrics({"t": difficulty + 0.01 + rng.normal(0, 0.01, 80)}) for _ in range(3)]
    boot = bootstrap_groups({"a": a, "b": b}, {"t": 80}, {"all": ["t"]}, n_resamples=500)
    diff, alone = boot.compare("b", "a", "all"), boot.interval("a", "all")
    assert excludes_zero(diff) and diff.low < 0.01 < diff.high
    assert (diff.high - diff.low) < 0.1 * (alone.high - alone.low)
    # seed-to-seed differences widen the interval: the same items with one seed far off
    far = [_metrics({"t": difficulty + 0.01}), _metrics({"t": difficulty + 0.01}), _metrics({"t": difficulty + 0.11})]
    wide = bootstrap_groups({"a": a, "far": far}, {"t": 80}, {"all": ["t"]}, n_resamples=500).compare("far", "a", "all")
    assert (wide.high - wide.low) > 3 * (diff.high - diff.low)


def test_a_single_seed_model_joins_multi_seed_models_and_bad_input_is_refused():
    rng = np.random.default_rng(3)
    one = [_metrics({"t": rng.uniform(0, 1, 20)})]
    three = [_metrics({"t": rng.uniform(0, 1, 20)}) for _ in range(3)]
    boot = bootstrap_groups({"base": one, "x": three}, {"t": 20}, {"all": ["t"]}, n_resamples=50)
    assert boot.resampled["base"]["all"].shape == (50,)
    with pytest.raises(ValueError, match="same number of seeds"):
        bootstrap_groups({"x": three, "y": three[:2]}, {"t": 20}, {"all": ["t"]})
    with pytest.raises(ValueError, match="no item scores"):
        bootstrap_groups({"x": three}, {"t": 20, "u": 5}, {"all": ["t", "u"]})

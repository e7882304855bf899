"""Bagging sampler: exact per-dataset sizes, no duplicates, seeded reproducibility, manifest JSON."""

import json
import subprocess
import sys

import numpy as np
import pytest

from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.sampling import (
    SubsetManifest,
    combine_incremental,
    sample_bag,
    sample_subsets,
)


def make_dataset(name: str, n: int, task_type: str = "retrieval") -> TrainDataset:
    examples = [Example(dataset=name, index=i, query=f"{name} q{i}", pos=(f"{name} p{i}",), task_type=task_type)
                for i in range(n)]
    return TrainDataset(name=name, task_type=task_type, examples=examples)


DATASETS = [make_dataset("alpha", 101), make_dataset("beta", 37), make_dataset("gamma", 8, "classification")]


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.8, 1.0])
def test_sizes_exact_and_no_duplicates(ratio):
    m = sample_subsets(DATASETS, ratio, seed=3)
    for d in DATASETS:
        idx = m.indices[d.name]
        assert len(idx) == round(ratio * len(d))
        assert len(set(idx)) == len(idx)
        assert idx == sorted(idx)
        assert all(0 <= i < len(d) for i in idx)
    assert m.mode == "without_replacement"
    if ratio == 1.0:
        assert all(m.indices[d.name] == list(range(len(d))) for d in DATASETS)


def test_same_seed_same_subsets_different_seed_differs():
    a = sample_subsets(DATASETS, 0.4, seed=7)
    b = sample_subsets(DATASETS, 0.4, seed=7)
    c = sample_subsets(DATASETS, 0.4, seed=8)
    assert a.indices == b.indices
    assert a.indices["alpha"] != c.indices["alpha"]


def test_same_subsets_in_a_fresh_process():
    """The draw depends only on the seed and names (no salted Python hash): a new process agrees."""
    code = ("from tests.test_data_sampling import DATASETS;"
            "from boom_jax.data.sampling import sample_subsets;"
            "import json;print(json.dumps(sample_subsets(DATASETS, 0.6, seed=11).indices))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert json.loads(out.stdout) == sample_subsets(DATASETS, 0.6, seed=11).indices


def test_with_replacement_is_a_bootstrap():
    m = sample_subsets(DATASETS, 1.0, seed=0, replace=True)
    assert m.mode == "with_replacement"
    alpha = m.indices["alpha"]
    assert len(alpha) == 101 and len(set(alpha)) < 101  # repeats happen (P(no repeat) ~ 1e-43)
    subset = m.apply(DATASETS)
    assert [e.index for e in subset[0].examples] == alpha


def test_pooled_draws_over_all_datasets():
    m = sample_subsets(DATASETS, 0.5, seed=1, pooled=True)
    assert m.mode == "pooled"
    assert m.num_examples == round(0.5 * (101 + 37 + 8))
    for d in DATASETS:
        assert len(set(m.indices[d.name])) == len(m.indices[d.name])


def test_manifest_json_round_trip_and_apply(tmp_path):
    m = sample_subsets(DATASETS, 0.4, seed=5)
    path = tmp_path / "sub" / "manifest.json"
    m.save(str(path))
    loaded = SubsetManifest.load(str(path))
    assert loaded == m
    assert json.loads(path.read_text())["indices"]["beta"] == m.indices["beta"]
    subset = loaded.apply(DATASETS)
    assert [len(d) for d in subset] == [round(0.4 * 101), round(0.4 * 37), round(0.4 * 8)]
    assert [e.index for e in subset[1].examples] == m.indices["beta"]
    with pytest.raises(ValueError, match="'alpha' has 100 examples but the manifest was drawn from 101"):
        m.apply([make_dataset("alpha", 100), DATASETS[1], DATASETS[2]])


def test_bag_members_differ_and_bad_ratio_errors():
    bag = sample_bag(DATASETS, [0.4, 0.4, 1.0], seed=0)
    assert [m.ratio for m in bag] == [0.4, 0.4, 1.0]
    assert bag[0].indices != bag[1].indices
    assert bag[2].indices["alpha"] == list(range(101))
    with pytest.raises(ValueError, match="needs replace=True"):
        sample_subsets(DATASETS, 1.5, seed=0)


def test_incremental_combines_history_and_new_data():
    new = [make_dataset("delta", 20)]
    combined, manifest = combine_incremental(DATASETS, new, ratio=0.4, seed=2)
    assert [d.name for d in combined] == ["alpha", "beta", "gamma", "delta"]
    assert [len(d) for d in combined] == [40, 15, 3, 20]
    assert manifest.indices["delta"] == list(range(20))
    again, _ = combine_incremental(DATASETS, new, history=sample_subsets(DATASETS, 0.4, seed=2))
    assert [e.query for e in again[0].examples] == [e.query for e in combined[0].examples]
    with pytest.raises(ValueError, match="reuse the names"):
        combine_incremental(DATASETS, [make_dataset("beta", 3)])
    assert np.array_equal(manifest.indices["alpha"], sample_subsets(DATASETS, 0.4, seed=2).indices["alpha"])

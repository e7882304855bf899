"""An incremental update on a tiny model: history subset, update model, 0.5/0.5 merge, cost report."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from boom_jax.boom.incremental import run_incremental, split_old_new
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.sampling import SubsetManifest
from boom_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import bag as bag_config  # noqa: E402
from configs import incremental as incremental_config  # noqa: E402


def tiny_incremental_config():
    c = bag_config.get_config("tiny")
    del c["bag"]
    c.incremental = incremental_config.incremental_section()
    c.incremental.old_datasets = "debian_desc,wordnet_gloss,python_code"
    c.incremental.new_datasets = "bible_paraphrase"
    c.incremental.evaluate = False
    c.checkpoint.every_steps = 100
    c.data.limit = 20
    # padded batches of one length: one compiled step per run (packing's varying row counts and widths
    # compiled several; the workflow, not the batch layout, is under test here)
    c.data.packing = False
    c.data.fixed_length = True
    return c


@pytest.fixture(scope="module")
def update(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("incremental")
    return workdir, run_incremental(tiny_incremental_config(), str(workdir))


def test_history_is_forty_percent_of_every_old_dataset(update):
    workdir, summary = update
    history = SubsetManifest.load(str(workdir / "history.json"))
    assert sorted(history.indices) == ["debian_desc", "python_code", "wordnet_gloss"]
    for name, idx in history.indices.items():
        assert len(idx) == round(0.4 * 20) and len(set(idx)) == len(idx)
    assert summary["old_datasets"] == ["debian_desc", "wordnet_gloss", "python_code"]
    assert summary["new_datasets"] == ["bible_paraphrase"]


def test_update_costs_less_than_a_full_retrain(update):
    _, summary = update
    costs = summary["costs"]
    # BLS drops each dataset's partial last batch (batch 8): update = new 20 -> 2 batches, plus 40% of
    # each old dataset (8 examples) -> 1 batch each = 5 steps; full retrain = 4 datasets x 2 = 8 steps.
    assert costs["update"]["steps"] == 5
    assert costs["full_retrain"]["steps"] == 8
    assert costs["existing"]["steps"] == 6  # 3 old datasets x 20 -> 2 batches of 8 each


def test_incremental_model_is_the_half_half_multislerp(update):
    from boom_jax.merging.methods import MERGE_METHODS
    from boom_jax.model_io import load_model

    workdir, _ = update
    existing = load_model(str(workdir / "existing" / "model"))[1]
    updated = load_model(str(workdir / "update" / "model"))[1]
    merged = load_model(str(workdir / "merged"))[1]
    expected = MERGE_METHODS["multislerp"]([existing, updated], weights=[0.5, 0.5])
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(merged)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert (workdir / "export" / "modules.json").exists()
    table = (workdir / "summary.md").read_text()
    assert "| update | 5 |" in table and "| full_retrain | 8 |" in table
    assert json.loads((workdir / "summary.json").read_text())["merge"]["weights"] == [0.5, 0.5]


def test_bad_dataset_names_are_named():
    config = tiny_incremental_config()
    datasets = builtin_train_datasets(limit=4)
    config.incremental.new_datasets = "nope"
    with pytest.raises(ConfigError, match=r"config\.incremental\.new_datasets: unknown datasets \['nope'\]"):
        split_old_new(config, datasets)
    config.incremental.new_datasets = "debian_desc"
    with pytest.raises(ConfigError, match="both old and new"):
        split_old_new(config, datasets)

"""The bag's merge section: learned weights (LM-Cocktail, greedy soup) on a tiny bag, recorded in
bag.json / summary.json; merge.method / params / base checked before any training; the base model
as task-vector origin."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from boom_jax.boom.bag import merge_members, run_bag
from boom_jax.boom.merge_config import merge_spec
from boom_jax.boom.merge_weights import cocktail_weights, greedy_soup, heldout_split, learn_weights
from boom_jax.merging.methods import MERGE_METHODS
from boom_jax.model_io import load_model
from boom_jax.training.config_validation import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import bag as bag_config  # noqa: E402


def tiny_config(**merge):
    config = bag_config.get_config("tiny")
    with config.unlocked():
        config.data.limit = 24  # 8 held out per dataset, 16 left: the 50% member still gets a batch
        config.data.names = "debian_desc,python_code"
        config.data.fixed_length = True  # one compiled shape
        config.model.sizes.num_hidden_layers = 1
        config.checkpoint.every_steps = 100
        for key, value in merge.items():
            config.merge[key] = value
    return config


def test_cocktail_is_softmax_of_negative_loss_over_temperature():
    losses = [0.9, 0.5, 1.4]
    e = np.exp(-np.asarray(losses) / 0.2)
    np.testing.assert_allclose(cocktail_weights(losses, 0.2), e / e.sum(), rtol=1e-12)
    assert cocktail_weights([1e4, 1e4 + 1.0], 1e-3)[0] == pytest.approx(1.0)  # no overflow


def test_greedy_soup_adds_a_member_only_when_the_soup_improves():
    losses = [0.8, 0.5, 0.7, 0.6]  # ranked: 1, 3, 2, 0
    soup = {(1, 3): 0.45, (1, 3, 2): 0.47, (1, 3, 0): 0.40}
    weights, trace = greedy_soup(losses, lambda idx: soup[tuple(idx)])
    assert weights == [1 / 3, 1 / 3, 0.0, 1 / 3]
    assert [t["kept"] for t in trace] == [True, True, False, True]


@pytest.fixture(scope="module")
def greedy_bag(tmp_path_factory):
    """The bag run with merge.weights=auto:greedy over two finished members (run_bag skips finished
    members: here the random init plus different noise, so no training is needed to test the merge)."""
    import jax

    from boom_jax.atomic_io import write_json
    from boom_jax.boom.bag import MEMBER_RECORD, bag_members
    from boom_jax.model_io import save_model_folder
    from boom_jax.training.model_setup import load_model_for_training

    workdir = tmp_path_factory.mktemp("bag_greedy")
    config = tiny_config(weights="auto:greedy")
    cfg, params, tokenizer_dir = load_model_for_training(config, jax.random.PRNGKey(config.seed))
    params = jax.device_get(params)
    for m in bag_members(config.bag):
        rng = np.random.default_rng(m.index)
        member = jax.tree_util.tree_map(lambda x: x + (0.05 + 0.2 * m.index) * rng.standard_normal(x.shape).astype(x.dtype), params)
        folder = workdir / "members" / m.name
        model = save_model_folder(folder / "model", cfg, member, tokenizer_dir)
        write_json(str(folder / MEMBER_RECORD), {"name": m.name, "index": m.index, "ratio": m.ratio, "seed": m.seed,
                                                 "steps": 1, "examples": 8, "subset_examples": 8, "wall_time_s": 0.0,
                                                 "final_loss": 0.0, "model": model})
    summary = run_bag(config, str(workdir))
    return config, workdir, summary


def test_bag_learns_and_records_greedy_weights(greedy_bag):
    config, workdir, summary = greedy_bag
    plan = json.loads((workdir / "bag.json").read_text())
    assert plan["merge"]["auto"] == "greedy" and plan["merge"]["method"] == "multislerp"
    learned = summary["merge"]["learned"]
    saved = json.loads((workdir / "summary.json").read_text())["merge"]
    assert saved["weights"] == learned["weights"] == summary["merge"]["weights"]
    assert learned["trace"][0]["members"] == [int(np.argmin(learned["losses"]))]
    kept = {i for t in learned["trace"] if t["kept"] for i in t["members"]}
    assert learned["weights"] == [1 / len(kept) if i in kept else 0.0 for i in range(2)]
    members = [load_model(str(workdir / "members" / n / "model"))[1] for n in ("r050", "r100")]
    merged = load_model(str(workdir / "merged"))[1]
    want = MERGE_METHODS["multislerp"](members, weights=learned["weights"])
    import jax

    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(merged)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (workdir / "merged" / "recipe.yml").is_file()


def test_heldout_examples_are_removed_from_training():
    from boom_jax.training.train_data import load_train_datasets

    config = tiny_config()
    datasets = load_train_datasets(config)
    train, heldout = heldout_split(datasets, 8, config.bag.seed, min_train=8)
    for d, t, h in zip(datasets, train, heldout):
        assert len(t.examples) == len(d.examples) - 8 and len(h.examples) == 8
        assert not {e.query for e in h.examples} & {e.query for e in t.examples}
    with pytest.raises(ConfigError, match=r"config.merge.heldout_examples=20"):
        heldout_split(datasets, 20, config.bag.seed, min_train=8)


def test_cocktail_weights_from_the_same_members(greedy_bag):
    from boom_jax.training.train_data import load_train_datasets

    config, workdir, _ = greedy_bag
    with config.unlocked():
        config.merge.weights = "auto:cocktail"
        config.merge.temperature = 0.5
    spec = merge_spec(config, 2, allow_auto=True)
    _, heldout = heldout_split(load_train_datasets(config), spec.heldout_examples, config.bag.seed, 8)
    models = [str(workdir / "members" / n / "model") for n in ("r050", "r100")]
    learned = learn_weights(config, spec, models, heldout, str(workdir))
    assert learned["weights"] == pytest.approx(cocktail_weights(learned["losses"], 0.5))
    assert learned["losses"] == pytest.approx(json.loads((workdir / "summary.json").read_text())["merge"]["learned"]["losses"])


def test_task_arithmetic_around_the_training_base(greedy_bag, tmp_path):
    from boom_jax.training.model_setup import random_params

    config, workdir, summary = greedy_bag
    with config.unlocked():
        config.merge.weights = ""
        config.merge.method = "task_arithmetic"
        config.merge.base = "base"
        config.merge.params = {"lambda_": 0.5}
    record = merge_members(config, str(workdir), summary["members"])
    assert record["method"] == "task_arithmetic" and record["base"] == "base"
    cfg, base, _ = load_model(str(workdir / "base_model"))  # the random init, saved for the merge
    import jax

    np.testing.assert_array_equal(jax.tree_util.tree_leaves(base)[0],
                                  jax.tree_util.tree_leaves(random_params(cfg, config.seed))[0])
    members = [load_model(str(workdir / "members" / n / "model"))[1] for n in ("r050", "r100")]
    want = MERGE_METHODS["task_arithmetic"](members, base=base, lambda_=0.5)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(load_model(str(workdir / "merged"))[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("merge,message", [
    ({"method": "ties"}, r"config.merge.base is empty but config.merge.method='ties' works on task vectors"),
    ({"method": "soup"}, r"config.merge.method='soup' is not a merge method"),
    ({"method": "task_arithmetic", "base": "base", "params": {"lambda_": float("nan")}},
     r"config.merge: task_arithmetic: lambda_=nan must be a finite number"),
    ({"method": "ties", "base": "base", "params": {"density": 0.0}}, r"config.merge: ties: density=0.0 must be in"),
    ({"weights": "1,2,3"}, r"config.merge.weights='1,2,3' has 3 weights for 2 models"),
    ({"weights": "auto:soup"}, r"config.merge.weights='auto:soup': expected"),
    ({"method": "sce", "base": "base", "weights": "auto:greedy"}, r"sce: takes no weights"),
    ({"base": "/nowhere"}, r"config.merge.base='/nowhere' is not a folder"),
])
def test_bad_merge_sections_fail_before_training(tmp_path, merge, message):
    config = tiny_config(**{k: v for k, v in merge.items() if k != "params"})
    if "params" in merge:
        with config.unlocked():
            config.merge.params = merge["params"]
    with pytest.raises(ConfigError, match=message):
        run_bag(config, str(tmp_path / "bag"))
    assert not os.path.exists(tmp_path / "bag" / "members")


@pytest.mark.parametrize("workflow", ["incremental", "clusters", "experiment"])
def test_other_workflows_check_config_merge_before_training(tmp_path, workflow):
    from configs import cluster_merge, experiment, incremental

    if workflow == "incremental":
        from boom_jax.boom.incremental import run_incremental as run
        config = incremental.get_config("smoke")
    elif workflow == "clusters":
        from boom_jax.boom.clusters import run_cluster_merge as run
        config = cluster_merge.get_config("tiny")
    else:
        from boom_jax.experiments.runner import run_experiment as run
        config = experiment.get_config("tiny")
    with config.unlocked():
        config.merge.method = "model_stock"  # needs a base: none given
    with pytest.raises(ConfigError, match=r"config.merge.base is empty but config.merge.method='model_stock'"):
        run(config, str(tmp_path / "w"))
    assert not any((tmp_path / "w").glob("*/*/checkpoints")) and not (tmp_path / "w" / "runs").exists()

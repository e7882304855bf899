"""The operator study and the learned-weight rows of the experiment: plan on the tiny config, each
merge's settings (checked before any training), and the refusal of a bad operator."""

import pathlib
import sys

import pytest

from boom_jax.errors import ConfigError
from boom_jax.experiments.plan import DatasetInfo, make_plan
from boom_jax.experiments.runner import merge_run_spec

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import experiment as experiment_config  # noqa: E402

TINY = [DatasetInfo("debian_desc", 16, "retrieval"), DatasetInfo("python_code", 16, "retrieval"),
        DatasetInfo("debian_section", 16, "classification")]


@pytest.fixture(scope="module")
def config():
    return experiment_config.get_config("tiny")


def _section(config):
    e = config.experiment.to_dict()
    e["strategies"] += ",boom_learned"  # left out of :tiny (too little data to hold out), in the default
    return e


def test_tiny_plan_has_all_seven_operators_and_learned_rows(config):
    plan = make_plan(TINY, _section(config), int(config.train.batch_size))
    merges = {m.name: m for m in plan.merges}
    for op in ("slerp", "multislerp", "karcher", "task_arithmetic", "ties", "sce", "model_stock"):
        m = merges[f"task_{op}"]
        assert m.method == op and m.inputs == ("task_retrieval", "dataset_debian_section")  # one-dataset type: reused
        spec = merge_run_spec(config, m, len(m.inputs))
        assert spec.method == op and spec.params == {} and spec.weights is None
        assert spec.base == ("base" if op in ("task_arithmetic", "ties", "sce", "model_stock") else "")
    assert merges["boom_50_100_cocktail"].inputs == ("r050", "r100")
    assert merge_run_spec(config, merges["boom_50_100_greedy"], 2).auto == "greedy"
    assert plan.learned and not plan.skipped
    labels = [r.label for r in plan.rows]
    assert labels.index("task_merging") < labels.index("task_slerp") < labels.index("boom_50_100_cocktail")


def test_slerp_row_skipped_with_more_than_two_task_types(config):
    three = TINY + [DatasetInfo("bible_paraphrase", 16, "sts")]
    plan = make_plan(three, config.experiment.to_dict(), int(config.train.batch_size))
    assert "task_slerp" not in {m.name for m in plan.merges}
    assert plan.skipped == ("task_slerp: SLERP merges exactly 2 models, the data has 3 task types",)


def test_bad_operator_and_bad_merge_settings_are_refused(config):
    section = dict(config.experiment.to_dict(), operators="ties,soup")
    with pytest.raises(ConfigError, match=r"config.experiment.operators: unknown \['soup'\]"):
        make_plan(TINY, section, int(config.train.batch_size))
    plan = make_plan(TINY, config.experiment.to_dict(), int(config.train.batch_size))
    boom = next(m for m in plan.merges if m.name == "boom_50_100")
    bad = config.copy_and_resolve_references()
    with bad.unlocked():
        bad.merge.weights = "1,2,3"
    with pytest.raises(ValueError, match=r"config.merge.weights='1,2,3' has 3 weights for 2 models"):
        merge_run_spec(bad, boom, 2)

"""The comparison's plan (pure): runs, datasets per run, ratio sets, reuse, costs and config errors."""

import pathlib
import sys

import pytest

from boom_jax.errors import ConfigError
from boom_jax.experiments.plan import (DatasetInfo, make_plan, parse_ratio_sets,
                                       schedule_steps)

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import experiment as experiment_config  # noqa: E402

DATASETS = [DatasetInfo("bible_paraphrase", 40, "sts"), DatasetInfo("debian_desc", 40, "retrieval"),
            DatasetInfo("debian_section", 44, "classification"), DatasetInfo("python_code", 40, "retrieval")]


def default_section(**changes):
    e = experiment_config.experiment_section().to_dict()
    e.update(changes)
    return e


@pytest.fixture(scope="module")
def plan():
    return make_plan(DATASETS, default_section(), batch_size=8)


def test_default_plan_has_every_strategy_of_the_paper(plan):
    assert [r.label for r in plan.rows] == [
        "base", "bls", "dataset_sequential", "task_sequential", "two_stage", "dataset_merging", "task_merging", "cluster_merging",
        "task_multislerp", "task_karcher", "task_task_arithmetic", "task_ties", "task_sce", "task_model_stock",
        "boom_20_40_60_80_100", "boom_40_60_80_100", "boom_80_100", "boom_20_40_60_80_100_cocktail",
        "boom_20_40_60_80_100_greedy", "incremental_existing", "incremental"]
    assert plan.incremental


def test_one_bag_serves_every_ratio_set_and_bls(plan):
    assert plan.bag_members == ("r020", "r040", "r060", "r080", "r100")
    merges = {m.name: m.inputs for m in plan.merges}
    assert merges["boom_20_40_60_80_100"] == ("r020", "r040", "r060", "r080", "r100")
    assert merges["boom_40_60_80_100"] == ("r040", "r060", "r080", "r100")
    assert merges["boom_80_100"] == ("r080", "r100")
    assert next(r for r in plan.rows if r.label == "bls").source == "r100"
    assert "bls" not in {r.name for r in plan.train_runs}
    # 20% of 40 = 8 = one batch per dataset; 20% of 44 = round(8.8) = 9 -> one batch.
    assert plan.member_steps == {"r020": 4, "r040": 8, "r060": 12, "r080": 16, "r100": 20}


def test_datasets_and_orders_of_each_run(plan):
    runs = {r.name: r for r in plan.train_runs}
    assert runs["dataset_sequential"].datasets == ("bible_paraphrase", "debian_desc", "debian_section", "python_code")
    # retrieval first, then task types in order of appearance.
    assert runs["task_sequential"].datasets == ("debian_desc", "python_code", "bible_paraphrase", "debian_section")
    assert runs["two_stage"].first_stage == ("debian_desc", "python_code")
    assert runs["two_stage"].datasets[:2] == ("debian_desc", "python_code")
    assert runs["task_retrieval"].datasets == ("debian_desc", "python_code")
    for name in ("bible_paraphrase", "debian_desc", "debian_section", "python_code"):
        assert runs[f"dataset_{name}"].datasets == (name,) and runs[f"dataset_{name}"].schedule == "bls"
    # A task type with one dataset reuses that dataset's model instead of training it twice.
    merges = {m.name: m.inputs for m in plan.merges}
    assert merges["task_merging"] == ("task_retrieval", "dataset_bible_paraphrase", "dataset_debian_section")
    assert not any(r.name.startswith("task_sts") or r.name.startswith("task_class") for r in plan.train_runs)
    assert runs["dataset_debian_section"].steps == 5 and runs["dataset_debian_section"].examples == 40


def test_explicit_orders_and_two_stage_groups():
    plan = make_plan(DATASETS, default_section(
        dataset_order="python_code,debian_section,debian_desc,bible_paraphrase",
        task_order="classification,sts,retrieval", two_stage_first="sts,debian_section",
        strategies="dataset_sequential,task_sequential,two_stage"), batch_size=8, include_base=False)
    runs = {r.name: r for r in plan.train_runs}
    assert runs["dataset_sequential"].datasets == ("python_code", "debian_section", "debian_desc", "bible_paraphrase")
    assert runs["task_sequential"].datasets == ("debian_section", "bible_paraphrase", "python_code", "debian_desc")
    assert set(runs["two_stage"].first_stage) == {"bible_paraphrase", "debian_section"}
    assert plan.bag_members == () and [r.label for r in plan.rows] == [
        "dataset_sequential", "task_sequential", "two_stage"]


def test_bls_trained_separately_when_asked():
    plan = make_plan(DATASETS, default_section(strategies="bls", bls_from_bag=False), batch_size=8)
    assert plan.bag_members == ()
    assert [(r.name, r.schedule, r.steps) for r in plan.train_runs] == [("bls", "bls", 20)]


def test_ratio_sets_parse_and_refuse_bad_values():
    assert parse_ratio_sets("100,20;80,100") == [(0.2, 1.0), (0.8, 1.0)]
    for bad, words in (("", "empty"), ("20,abc", "not a list"), ("0,50", "(0, 100]"), ("50,50", "repeats")):
        with pytest.raises(ConfigError, match="boom_ratio_sets") as err:
            parse_ratio_sets(bad)
        assert words in str(err.value)


def test_bad_sections_name_the_key():
    cases = [
        (dict(strategies="bls,cluster_soup"), "config.experiment.strategies: unknown \\['cluster_soup'\\]"),
        (dict(task_order="retrieval"), "config.experiment.task_order"),
        (dict(dataset_order="debian_desc"), "config.experiment.dataset_order"),
        (dict(two_stage_first="nope"), "config.experiment.two_stage_first"),
        (dict(two_stage_first="retrieval,sts,classification"), "some but not all"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            make_plan(DATASETS, default_section(**changes), batch_size=8)


def test_zero_step_runs_are_refused():
    with pytest.raises(ConfigError, match="member r020 would train 0 steps"):
        make_plan(DATASETS, default_section(strategies="boom"), batch_size=16)
    with pytest.raises(ConfigError, match="run 'dataset_bible_paraphrase' would train 0 steps"):
        make_plan(DATASETS, default_section(strategies="dataset_merging"), batch_size=64)


def test_steps_match_the_schedules_batches():
    from boom_jax.data.records import Example, TrainDataset
    from boom_jax.data.schedules import make_plan as schedule_plan

    sets = [TrainDataset(d.name, d.task_type, [Example(d.name, i, f"q{i}", ("p",), (), "", d.task_type)
                                               for i in range(d.size)], True, "") for d in DATASETS]
    for schedule in ("bls", "dataset_sequential", "task_sequential", "two_stage"):
        assert len(schedule_plan(schedule, sets, 8, seed=0)) == schedule_steps(DATASETS, 8) == 20


def test_configs_default_sizes_are_the_bags():
    from configs import bag

    c, b = experiment_config.get_config("full"), bag.get_config()
    for key in ("limit", "query_max_len", "passage_max_len", "train_group_size"):
        assert c.data[key] == b.data[key]
    assert c.train.batch_size == b.train.batch_size and c.experiment.bag_workdir == ""
    assert experiment_config.get_config("tiny").model.random_init
    with pytest.raises(ValueError, match="unknown argument 'huge'"):
        experiment_config.get_config("huge")


def test_two_stage_run_config_carries_its_first_stage_to_the_loop():
    from boom_jax.data.records import Example, TrainDataset
    from boom_jax.data.schedules import make_plan as schedule_plan
    from boom_jax.experiments.runner import _run_datasets, training_config
    from boom_jax.training.train_data import schedule_options

    plan = make_plan(DATASETS, default_section(strategies="two_stage", two_stage_first="sts,debian_section"),
                     batch_size=8, include_base=False)
    run = plan.train_runs[0]
    sets = [TrainDataset(d.name, d.task_type, [Example(d.name, i, f"q{i}", ("p",), (), "", d.task_type)
                                               for i in range(d.size)], True, "") for d in DATASETS]
    config = training_config(experiment_config.get_config(), run.name, run.schedule, run.first_stage)
    assert config.data.schedule == "two_stage"
    assert config.data.schedule_options.first_stage == "bible_paraphrase,debian_section"
    chosen = _run_datasets(run, sets)
    batches = schedule_plan("two_stage", chosen, 8, seed=0, **schedule_options(config, chosen))
    order = [b.dataset for b in batches]
    assert set(order[:10]) == {"bible_paraphrase", "debian_section"} and len(order) == 20
    assert set(order[10:]) == {"debian_desc", "python_code"}


def test_incremental_runs_are_sized_from_old_new_and_history():
    inc = experiment_config.get_config().incremental.to_dict()
    inc.update(old_datasets="debian_desc,python_code,bible_paraphrase", new_datasets="debian_section")
    plan = make_plan(DATASETS, default_section(strategies="incremental"), batch_size=8, incremental=inc)
    # existing: 3 x 40 // 8 = 15; update: 40% of 40 = 16 -> 2 batches per old set (6) + 44 // 8 = 5.
    assert plan.incremental_steps == (15, 11)

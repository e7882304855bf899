"""Batch schedules: single-dataset BLS batches covering each example once, orders, determinism."""

import collections

import pytest

from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.schedules import (
    SCHEDULE_OPTIONS, SCHEDULES, check_schedule_options, make_plan, option_names, plan_length_per_dataset,
    schedule_arguments, stages_from_first,
)
from boom_jax.errors import ConfigError
from boom_jax.train import parse_config
from boom_jax.training.config_validation import validate_config


def make_dataset(name: str, n: int, task_type: str = "retrieval") -> TrainDataset:
    examples = [Example(dataset=name, index=i, query=f"{name} q{i}", pos=(f"{name} p{i}",), task_type=task_type)
                for i in range(n)]
    return TrainDataset(name=name, task_type=task_type, examples=examples)


DATASETS = [
    make_dataset("msmarco", 43),
    make_dataset("nq", 20),
    make_dataset("banking", 17, "classification"),
    make_dataset("arxiv", 12, "clustering"),
    make_dataset("fiqa", 9),
]
B = 4


def test_bls_single_dataset_batches_each_example_once():
    plan = make_plan("bls", DATASETS, B, seed=0, epoch=0)
    assert all(len(b) == B and b.dataset is not None for b in plan)
    seen = collections.Counter(item for b in plan for item in b.items)
    assert max(seen.values()) == 1
    for d in DATASETS:
        assert sum(1 for name, _ in seen if name == d.name) == len(d) // B * B  # only the tail dropped
    # batches of different datasets are interleaved, not in blocks
    order = [b.dataset for b in plan]
    changes = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert changes > len(DATASETS)


def test_plans_are_deterministic_and_change_with_epoch_and_seed():
    for name in SCHEDULES:
        a = make_plan(name, DATASETS, B, seed=1, epoch=2)
        assert a == make_plan(name, DATASETS, B, seed=1, epoch=2)
        assert a != make_plan(name, DATASETS, B, seed=1, epoch=3)
        assert a != make_plan(name, DATASETS, B, seed=2, epoch=2)


def test_instance_mixing_mixes_datasets():
    plan = make_plan("instance_mixing", DATASETS, B, seed=0)
    assert len(plan) == sum(len(d) for d in DATASETS) // B
    assert any(b.dataset is None for b in plan)
    assert len({item for b in plan for item in b.items}) == len(plan) * B


def test_dataset_sequential_respects_order():
    order = ["fiqa", "banking", "msmarco", "arxiv", "nq"]
    plan = make_plan("dataset_sequential", DATASETS, B, seed=0, order=order)
    blocks = [name for i, name in enumerate(b.dataset for b in plan) if i == 0 or plan[i - 1].dataset != name]
    assert blocks == order
    assert plan_length_per_dataset(plan) == {d.name: len(d) // B * B for d in DATASETS}
    with pytest.raises(ValueError, match=r"missing: \['nq'\]"):
        make_plan("dataset_sequential", DATASETS, B, seed=0, order=order[:-1])


def test_task_sequential_and_two_stage():
    plan = make_plan("task_sequential", DATASETS, B, seed=0, order=["clustering", "retrieval", "classification"])
    tasks = {d.name: d.task_type for d in DATASETS}
    seq = [tasks[b.dataset] for b in plan]
    blocks = [t for i, t in enumerate(seq) if i == 0 or seq[i - 1] != t]
    assert blocks == ["clustering", "retrieval", "classification"]
    retrieval_part = [b.dataset for b in plan if tasks[b.dataset] == "retrieval"]
    assert retrieval_part != sorted(retrieval_part, key=["msmarco", "nq", "fiqa"].index)  # BLS inside

    default = make_plan("two_stage", DATASETS, B, seed=0)
    seq = [tasks[b.dataset] == "retrieval" for b in default]
    assert seq == sorted(seq, reverse=True) and seq[0] and not seq[-1]
    custom = make_plan("two_stage", DATASETS, B, seed=0, stages=[["banking", "clustering"], ["retrieval"]])
    first = {b.dataset for b in custom[: (17 // B + 12 // B)]}
    assert first == {"banking", "arxiv"}
    with pytest.raises(ValueError, match="datasets in no stage: \\['fiqa'\\]"):
        make_plan("two_stage", DATASETS, B, seed=0, stages=[["msmarco", "nq"], ["classification", "clustering"]])
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        make_plan("nope", DATASETS, B, seed=0)


def test_two_stage_first_names_stage_one_and_the_rest_is_stage_two():
    by_first = make_plan("two_stage", DATASETS, B, seed=0, first=["banking", "fiqa"])
    by_stages = make_plan("two_stage", DATASETS, B, seed=0,
                          stages=[["banking", "fiqa"], ["msmarco", "nq", "arxiv"]])
    assert by_first == by_stages
    assert {b.dataset for b in by_first[: 17 // B + 9 // B]} == {"banking", "fiqa"}
    # a task type selects all its datasets
    assert stages_from_first(DATASETS, ["clustering", "nq"]) == [["nq", "arxiv"], ["msmarco", "banking", "fiqa"]]
    with pytest.raises(ValueError, match=r"\['sts'\] are neither dataset names nor task types"):
        stages_from_first(DATASETS, ["nq", "sts"])
    with pytest.raises(ValueError, match="stage 2 would be empty"):
        stages_from_first(DATASETS, ["retrieval", "classification", "clustering"])
    with pytest.raises(ValueError, match="give stages or first, not both"):
        make_plan("two_stage", DATASETS, B, seed=0, first=["nq"], stages=[["nq"], ["msmarco"]])


def test_config_option_first_stage_becomes_the_stages_and_bad_entries_name_the_key():
    from boom_jax.training.config_validation import ConfigError
    from boom_jax.training.train_data import schedule_options
    from configs import tiny

    config = tiny.get_config()
    config.data.schedule = "two_stage"
    config.data.schedule_options.first_stage = "arxiv, banking"
    assert schedule_options(config, DATASETS) == {"stages": [["banking", "arxiv"], ["msmarco", "nq", "fiqa"]]}
    config.data.schedule_options.first_stage = ""
    assert schedule_options(config, DATASETS) == {}  # the default stages (retrieval first)
    config.data.schedule_options.first_stage = "quora"
    with pytest.raises(ConfigError, match=r"config.data.schedule_options.first_stage='quora': \['quora'\] are neither"):
        schedule_options(config, DATASETS)
    config.data.schedule = "bls"
    assert schedule_options(config, DATASETS) == {}


def test_the_registry_declares_each_schedules_options_and_the_defaults_hold_every_one():
    from configs.common import base_config

    assert set(SCHEDULE_OPTIONS) == set(SCHEDULES)
    assert sorted(base_config().data.schedule_options.keys()) == option_names() == ["first_stage", "order"]
    assert all(v == "" for v in base_config().data.schedule_options.values())
    config = parse_config(["prog", "--config=configs/tiny.py", "--config.data.schedule=two_stage",
                           "--config.data.schedule_options.first_stage=nq,classification"])
    assert config.data.schedule_options.to_dict() == {"order": "", "first_stage": "nq,classification"}


def test_an_option_the_schedule_does_not_take_is_refused_naming_the_key():
    from configs import tiny

    config = tiny.get_config()
    config.data.schedule_options.order = "nq,msmarco"
    for schedule in ("task_sequential", "dataset_sequential"):
        config.data.schedule = schedule
        validate_config(config)
    for schedule, takes in (("two_stage", "first_stage"), ("bls", "none")):
        config.data.schedule = schedule
        with pytest.raises(ConfigError) as err:
            validate_config(config)
        message = str(err.value)
        assert "\n" not in message and message.startswith("config.data.schedule_options.order='nq,msmarco' is not")
        assert f"{schedule} takes {takes}" in message and "dataset_sequential, task_sequential" in message
    config.data.schedule_options.order = ""  # "" = not set: every schedule accepts it
    validate_config(config)
    with pytest.raises(ConfigError, match="config.data.schedule_options.order=3 must be a comma-separated string"):
        check_schedule_options("bls", {"order": 3})


def test_order_options_set_the_sequential_schedules_order():
    order = "fiqa,nq,msmarco,banking,arxiv"
    args = schedule_arguments("dataset_sequential", {"order": order}, DATASETS)
    assert args == {"order": order.split(",")}
    plan = make_plan("dataset_sequential", DATASETS, B, seed=0, **args)
    assert list(dict.fromkeys(b.dataset for b in plan)) == order.split(",")
    args = schedule_arguments("task_sequential", {"order": "clustering, retrieval,classification"}, DATASETS)
    plan = make_plan("task_sequential", DATASETS, B, seed=0, **args)
    assert [b.dataset for b in plan[:12 // B]] == ["arxiv"] * (12 // B) and plan[-1].dataset == "banking"
    with pytest.raises(ConfigError, match=r"config.data.schedule_options.order='nq': dataset_sequential.order must "
                                          r"list every dataset once; unknown: \[\], missing: \['msmarco'"):
        schedule_arguments("dataset_sequential", {"order": "nq"}, DATASETS)
    with pytest.raises(ConfigError, match=r"config.data.schedule_options.order='sts,retrieval': .*unknown: \['sts'\]"):
        schedule_arguments("task_sequential", {"order": "sts,retrieval"}, DATASETS)
    assert schedule_arguments("bls", {"order": order}, DATASETS) == {}  # not its option: the config check refuses it


def test_old_workdirs_with_two_stage_first_resume_under_the_new_key():
    """A checkpoint written before data.schedule_options holds data.two_stage_first: it is compared as
    data.schedule_options.first_stage, so the same stage 1 resumes and another is refused; the old key on
    the command line or in a config names the new one."""
    from boom_jax.training.config_validation import check_override_keys, upgrade_config_dict
    from boom_jax.training.resume_rules import check_resume_config
    from configs import tiny

    def new(first: str) -> dict:
        return {"data": {"schedule": "two_stage", "schedule_options": {"order": "", "first_stage": first}}}

    saved = {"data": {"schedule": "two_stage", "two_stage_first": "arxiv"}}
    assert upgrade_config_dict(saved) == {"data": {"schedule": "two_stage", "schedule_options": {"first_stage": "arxiv"}}}
    assert saved == {"data": {"schedule": "two_stage", "two_stage_first": "arxiv"}}  # the saved dict is left alone
    assert check_resume_config(saved, new("arxiv"), "w", 2) == []
    with pytest.raises(ConfigError, match=r"config\.data\.schedule_options\.first_stage: 'arxiv' in the checkpoint, "
                                          r"'' now"):
        check_resume_config(saved, new(""), "w", 2)
    with pytest.raises(ConfigError, match=r"^config.data.two_stage_first is not a known key; it is now "
                                          r"config.data.schedule_options.first_stage$"):
        check_override_keys(["--config.data.two_stage_first=arxiv"])
    config = tiny.get_config()
    with config.unlocked():
        config.data.two_stage_first = "arxiv"
    with pytest.raises(ConfigError, match="it is now config.data.schedule_options.first_stage"):
        validate_config(config)

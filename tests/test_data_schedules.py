"""Batch schedules: single-dataset BLS batches covering each example once, orders, determinism."""

import collections

import pytest

from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.schedules import SCHEDULES, make_plan, plan_length_per_dataset, stages_from_first


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


def test_config_key_two_stage_first_becomes_the_stages_and_bad_entries_name_the_key():
    from boom_jax.training.config_validation import ConfigError
    from boom_jax.training.loop import schedule_options
    from configs import tiny

    config = tiny.get_config()
    config.data.schedule = "two_stage"
    config.data.two_stage_first = "arxiv, banking"
    assert schedule_options(config, DATASETS) == {"stages": [["banking", "arxiv"], ["msmarco", "nq", "fiqa"]]}
    config.data.two_stage_first = ""
    assert schedule_options(config, DATASETS) == {}  # the default stages (retrieval first)
    config.data.two_stage_first = "quora"
    with pytest.raises(ConfigError, match=r"config.data.two_stage_first='quora': \['quora'\] are neither"):
        schedule_options(config, DATASETS)
    config.data.schedule = "bls"
    assert schedule_options(config, DATASETS) == {}

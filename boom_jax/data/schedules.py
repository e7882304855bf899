"""Batch plans: which examples go into which batch, in which order, for one epoch.

Every schedule is a deterministic function `(datasets, batch_size, seed, epoch, **options) ->
list[PlannedBatch]`; an example is named by (dataset name, position in `dataset.examples`). Partial
batches are dropped (per dataset for single-dataset schedules) so every batch has `batch_size` queries.

- "bls" (default): batch-level shuffling; each batch from one dataset, all batches shuffled together.
- "instance_mixing": examples of all datasets shuffled together, batches mix datasets.
- "dataset_sequential": dataset after dataset (option `order`: dataset names), shuffled within each.
- "task_sequential": task type after task type (option `order`: task types), BLS inside each.
- "two_stage": option `stages`: two (or more) lists of dataset names or task types; BLS inside each
  stage; default stage 1 = retrieval datasets, stage 2 = the rest.

A run's config sets a schedule's options in `config.data.schedule_options` (comma-separated names, "" = the
schedule's default); `SCHEDULE_OPTIONS` says which options each schedule takes, `check_schedule_options`
refuses an option the chosen schedule does not take and `schedule_arguments` turns the options into the
schedule's keyword arguments, checked against the datasets (errors name the config key).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import dataset_rng
from boom_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One global batch: (dataset name, example position) per query."""

    items: tuple[tuple[str, int], ...]

    @classmethod
    def single(cls, dataset: str, indices: Sequence[int]) -> "PlannedBatch":
        return cls(tuple((dataset, int(i)) for i in indices))

    @property
    def dataset(self) -> str | None:
        """The batch's dataset, or None when it mixes datasets."""
        names = {name for name, _ in self.items}
        return next(iter(names)) if len(names) == 1 else None

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(i for _, i in self.items)

    def __len__(self) -> int:
        return len(self.items)


Schedule = Callable[..., list[PlannedBatch]]


def _check(datasets: Sequence[TrainDataset], batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}")
    if not datasets:
        raise ValueError("no training datasets given")


def _dataset_batches(d: TrainDataset, batch_size: int, seed: int, epoch: int) -> list[PlannedBatch]:
    """A dataset's examples shuffled (per seed, epoch and name) and cut into full batches."""
    order = dataset_rng(seed, "epoch", epoch, "dataset", d.name).permutation(len(d))
    full = len(d) // batch_size * batch_size
    return [PlannedBatch.single(d.name, order[s : s + batch_size]) for s in range(0, full, batch_size)]


def _shuffled(batches: list[PlannedBatch], seed: int, epoch: int, key: str) -> list[PlannedBatch]:
    perm = dataset_rng(seed, "epoch", epoch, "shuffle", key).permutation(len(batches))
    return [batches[i] for i in perm]


def bls(datasets: Sequence[TrainDataset], batch_size: int, seed: int, epoch: int = 0) -> list[PlannedBatch]:
    """Batch-level shuffling: single-dataset batches of all datasets, shuffled together."""
    _check(datasets, batch_size)
    batches = [b for d in datasets for b in _dataset_batches(d, batch_size, seed, epoch)]
    return _shuffled(batches, seed, epoch, "bls:" + ",".join(sorted(d.name for d in datasets)))


def instance_mixing(datasets: Sequence[TrainDataset], batch_size: int, seed: int, epoch: int = 0) -> list[PlannedBatch]:
    """Examples of all datasets shuffled together; batches mix datasets; the last partial batch dropped."""
    _check(datasets, batch_size)
    items = [(d.name, i) for d in datasets for i in range(len(d))]
    order = dataset_rng(seed, "epoch", epoch, "mixing").permutation(len(items))
    full = len(items) // batch_size * batch_size
    return [PlannedBatch(tuple(items[j] for j in order[s : s + batch_size])) for s in range(0, full, batch_size)]


def _ordered(datasets: Sequence[TrainDataset], order: Sequence[str] | None, what: str) -> list[TrainDataset]:
    by_name = {d.name: d for d in datasets}
    if order is None:
        return list(datasets)
    order = list(order)
    unknown = [n for n in order if n not in by_name]
    missing = [n for n in by_name if n not in order]
    if unknown or missing or len(set(order)) != len(order):
        raise ValueError(f"{what}.order must list every dataset once; unknown: {unknown}, missing: {missing}, "
                         f"given: {order}")
    return [by_name[n] for n in order]


def dataset_sequential(
    datasets: Sequence[TrainDataset], batch_size: int, seed: int, epoch: int = 0, order: Sequence[str] | None = None
) -> list[PlannedBatch]:
    """All batches of the first dataset, then the second... (order: dataset names; default as given)."""
    _check(datasets, batch_size)
    return [b for d in _ordered(datasets, order, "dataset_sequential") for b in _dataset_batches(d, batch_size, seed, epoch)]


def _task_types_in_order(datasets: Sequence[TrainDataset]) -> list[str]:
    return list(dict.fromkeys(d.task_type for d in datasets))


def _task_order(datasets: Sequence[TrainDataset], order: Sequence[str] | None) -> list[str]:
    """The task types in training order: `order` (every task type of the data once), default first appearance."""
    present = _task_types_in_order(datasets)
    order = present if order is None else list(order)
    unknown = [t for t in order if t not in present]
    missing = [t for t in present if t not in order]
    if unknown or missing or len(set(order)) != len(order):
        raise ValueError(f"task_sequential.order must list every task type once; unknown: {unknown}, "
                         f"missing: {missing}, given: {order}")
    return order


def task_sequential(
    datasets: Sequence[TrainDataset], batch_size: int, seed: int, epoch: int = 0, order: Sequence[str] | None = None
) -> list[PlannedBatch]:
    """Task type after task type (order: task types; default first appearance), BLS within each type."""
    _check(datasets, batch_size)
    plan: list[PlannedBatch] = []
    for task in _task_order(datasets, order):
        group = [d for d in datasets if d.task_type == task]
        batches = [b for d in group for b in _dataset_batches(d, batch_size, seed, epoch)]
        plan.extend(_shuffled(batches, seed, epoch, "task:" + task))
    return plan


def stages_from_first(datasets: Sequence[TrainDataset], first: Sequence[str]) -> list[list[str]]:
    """[stage 1, stage 2] dataset names: stage 1 = the datasets named, or of a task type named, in
    ``first``; stage 2 = the rest. A key matching no dataset, or a stage 1 of all datasets, is an error."""
    unknown = [k for k in first if not any(k in (d.name, d.task_type) for d in datasets)]
    if unknown:
        raise ValueError(f"{unknown} are neither dataset names nor task types of the data "
                         f"(datasets: {[d.name for d in datasets]})")
    stage1 = [d.name for d in datasets if d.name in first or d.task_type in first]
    if len(stage1) == len(datasets):
        raise ValueError(f"{list(first)} takes every dataset into stage 1; stage 2 would be empty")
    return [stage1, [d.name for d in datasets if d.name not in stage1]]


def two_stage(
    datasets: Sequence[TrainDataset],
    batch_size: int,
    seed: int,
    epoch: int = 0,
    stages: Sequence[Sequence[str]] | None = None,
    first: Sequence[str] | None = None,
) -> list[PlannedBatch]:
    """Stage after stage, BLS within each. A stage lists dataset names and/or task types; every dataset
    must fall in exactly one stage. ``first`` (instead of ``stages``): stage 1 = those names / task
    types, stage 2 = every other dataset. Default: [retrieval datasets], [all others]."""
    _check(datasets, batch_size)
    if first is not None:
        if stages is not None:
            raise ValueError("two_stage: give stages or first, not both")
        stages = stages_from_first(datasets, first)
    if stages is None:  # default: retrieval, then the rest (either may be empty)
        retrieval = [d.name for d in datasets if d.task_type == "retrieval"]
        stages = [retrieval, [d.name for d in datasets if d.name not in retrieval]]
    assigned: dict[str, int] = {}
    for s, stage in enumerate(stages):
        for key in stage:
            members = [d.name for d in datasets if d.name == key or d.task_type == key]
            if not members:
                raise ValueError(f"two_stage.stages[{s}]: {key!r} is neither a dataset name nor a task type of "
                                 f"the data (datasets: {[d.name for d in datasets]})")
            for name in members:
                if name in assigned and assigned[name] != s:
                    raise ValueError(f"two_stage.stages: dataset {name!r} is in stages {assigned[name]} and {s}")
                assigned[name] = s
    unassigned = [d.name for d in datasets if d.name not in assigned]
    if unassigned:
        raise ValueError(f"two_stage.stages: datasets in no stage: {unassigned}")
    plan: list[PlannedBatch] = []
    for s in range(len(stages)):
        group = [d for d in datasets if assigned[d.name] == s]
        batches = [b for d in group for b in _dataset_batches(d, batch_size, seed, epoch)]
        plan.extend(_shuffled(batches, seed, epoch, f"stage:{s}"))
    return plan


SCHEDULES: dict[str, Schedule] = {
    "bls": bls,
    "instance_mixing": instance_mixing,
    "dataset_sequential": dataset_sequential,
    "task_sequential": task_sequential,
    "two_stage": two_stage,
}


@dataclasses.dataclass(frozen=True)
class ScheduleOption:
    """One key of config.data.schedule_options: a comma-separated list of names ("" = the schedule's default)."""

    help: str
    # (datasets, the names given) -> the schedule's keyword arguments; ValueError when the names do not fit the data
    arguments: Callable[[Sequence[TrainDataset], list[str]], dict[str, Any]]


def _dataset_order(datasets: Sequence[TrainDataset], names: list[str]) -> dict[str, Any]:
    return {"order": [d.name for d in _ordered(datasets, names, "dataset_sequential")]}


# The options each schedule takes (configs/common.py holds a default "" for every key named here).
SCHEDULE_OPTIONS: dict[str, dict[str, ScheduleOption]] = {
    "bls": {},
    "instance_mixing": {},
    "dataset_sequential": {"order": ScheduleOption("dataset names in training order (default: as loaded)",
                                                   _dataset_order)},
    "task_sequential": {"order": ScheduleOption("task types in training order (default: first appearance)",
                                                lambda datasets, names: {"order": _task_order(datasets, names)})},
    "two_stage": {"first_stage": ScheduleOption(
        "stage-1 dataset names and/or task types (default: the retrieval datasets); stage 2 = every other dataset",
        lambda datasets, names: {"stages": stages_from_first(datasets, names)})},
}
OPTIONS_KEY = "config.data.schedule_options"


def option_names() -> list[str]:
    """Every option key some schedule takes."""
    return sorted({key for options in SCHEDULE_OPTIONS.values() for key in options})


def check_schedule_options(schedule: str, options: Mapping[str, Any]) -> None:
    """ConfigError naming the key for an option that is not a string, or that is set (not "") although
    `schedule` does not take it."""
    taken = SCHEDULE_OPTIONS.get(schedule, {})
    for key, value in options.items():
        if not isinstance(value, str):
            raise ConfigError(f"{OPTIONS_KEY}.{key}={value!r} must be a comma-separated string")
        if value and key not in taken:
            owners = sorted(name for name, opts in SCHEDULE_OPTIONS.items() if key in opts)
            raise ConfigError(f"{OPTIONS_KEY}.{key}={value!r} is not an option of config.data.schedule={schedule!r} "
                              f"(it is one of {', '.join(owners) or 'no schedule'}; {schedule} takes "
                              f"{', '.join(sorted(taken)) or 'none'}): set it to '' or change the schedule")


def schedule_arguments(schedule: str, options: Mapping[str, str], datasets: Sequence[TrainDataset]) -> dict[str, Any]:
    """The keyword arguments of `schedule` from the options it takes (others are ignored: the config check
    refuses them), checked against the datasets now, so a bad entry is a ConfigError naming its key before
    any work."""
    arguments: dict[str, Any] = {}
    for key, option in SCHEDULE_OPTIONS.get(schedule, {}).items():
        names = [s.strip() for s in str(options.get(key, "")).split(",") if s.strip()]
        if not names:
            continue
        try:
            arguments.update(option.arguments(datasets, names))
        except ValueError as e:
            raise ConfigError(f"{OPTIONS_KEY}.{key}={options[key]!r}: {e}") from None
    return arguments


def make_plan(
    name: str, datasets: Sequence[TrainDataset], batch_size: int, seed: int, epoch: int = 0, **options
) -> list[PlannedBatch]:
    """The plan of schedule `name` (a key of SCHEDULES) for one epoch."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](datasets, batch_size, seed, epoch, **options)


def plan_length_per_dataset(plan: Sequence[PlannedBatch]) -> dict[str, int]:
    """Examples per dataset in a plan (audit helper)."""
    counts: dict[str, int] = {}
    for b in plan:
        for name, _ in b.items:
            counts[name] = counts.get(name, 0) + 1
    return counts


"""The comparison's plan: which models to train, which to merge, and which rows the results table has.

Pure functions of the datasets' sizes and task types and of the `experiment` config section, so
the plan (and each run's cost in examples) is known, printed and tested before anything trains.

Strategies (PAPER.md): "bls", "dataset_sequential", "task_sequential", "two_stage",
"dataset_merging", "task_merging", "boom" (one row per ratio set) and "incremental".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from boom_jax.boom.bag import member_name
from boom_jax.data.sampling import subset_size
from boom_jax.errors import ConfigError

STRATEGIES = ("bls", "dataset_sequential", "task_sequential", "two_stage", "dataset_merging", "task_merging",
              "cluster_merging", "task_operators", "boom", "boom_learned", "incremental")
# The paper's operator study on task-level merging (config.experiment.operators); the task-vector
# operators merge around the training base model.
OPERATORS = ("slerp", "multislerp", "karcher", "task_arithmetic", "ties", "sce", "model_stock")
LEARNED_WEIGHTS = ("cocktail", "greedy")  # boom_learned rows: config.merge.weights="auto:<mode>"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What planning needs to know of a training dataset."""

    name: str
    size: int
    task_type: str


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """One model trained from the base model: DIR/runs/<name>/.

    `datasets` in the order the schedule sees them (sequential schedules follow it); for
    "two_stage", `first_stage` names the datasets of stage 1 (stage 2 = the rest).
    """

    name: str
    schedule: str
    datasets: tuple[str, ...]
    steps: int
    examples: int
    first_stage: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MergeRun:
    """One merged model: DIR/runs/<name>/model from the models of `inputs` (run or member names)."""

    name: str
    inputs: tuple[str, ...]
    method: str = ""  # "" = config.merge.method (with config.merge.params); else this operator's defaults
    weights: str = ""  # "" = config.merge.weights; "auto:cocktail" | "auto:greedy" = learned


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the results table: a model (`source`: a run, member or merge name) and its strategy."""

    label: str
    strategy: str
    source: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the experiment trains, merges and reports."""

    bag_members: tuple[str, ...]  # e.g. ("r020", ..., "r100"), trained as one bag
    bag_ratios: tuple[float, ...]
    member_steps: Mapping[str, int]
    train_runs: tuple[TrainRun, ...]
    merges: tuple[MergeRun, ...]
    rows: tuple[Row, ...]
    incremental: bool
    batch_size: int
    incremental_steps: tuple[int, int] = (0, 0)  # (existing model, update model)
    skipped: tuple[str, ...] = ()  # rows that cannot be built here, with the reason
    cluster: bool = False  # cluster-level merging (probes, clusters, merge: boom_jax.boom.clusters)

    @property
    def learned(self) -> bool:
        """Whether a merge learns its weights (the runs then hold out examples for it)."""
        return any(m.weights.startswith("auto:") for m in self.merges)

    def planned_examples(self) -> dict[str, int]:
        """Examples each trained unit (member or run) will see: steps x global batch."""
        out = {m: s * self.batch_size for m, s in self.member_steps.items()}
        out.update({r.name: r.examples for r in self.train_runs})
        return out


def _names(value: str) -> list[str]:
    return [n.strip() for n in str(value).split(",") if n.strip()]


def parse_ratio_sets(value: str) -> list[tuple[float, ...]]:
    """"20,40,60,80,100;80,100" -> [(0.2, ..., 1.0), (0.8, 1.0)] (percent, sets separated by ';')."""
    sets = []
    for i, part in enumerate(p for p in str(value).split(";") if p.strip()):
        try:
            pct = [float(x) for x in _names(part)]
        except ValueError:
            raise ConfigError(
                f"config.experiment.boom_ratio_sets: set {i} ({part.strip()!r}) is not a list of percentages") from None
        if not pct or any(not 0 < p <= 100 for p in pct):
            raise ConfigError(
                f"config.experiment.boom_ratio_sets: set {i} ({part.strip()!r}) needs percentages in (0, 100]")
        if len(set(pct)) != len(pct):
            raise ConfigError(f"config.experiment.boom_ratio_sets: set {i} repeats a ratio: {part.strip()!r}")
        sets.append(tuple(sorted(p / 100 for p in pct)))
    if not sets:
        raise ConfigError("config.experiment.boom_ratio_sets is empty; e.g. '20,40,60,80,100;80,100'")
    return sets


def boom_label(ratios: Sequence[float]) -> str:
    """'boom_20_40_60_80_100' for (0.2, ..., 1.0)."""
    return "boom_" + "_".join(str(int(round(r * 100))) for r in ratios)


def schedule_steps(datasets: Sequence[DatasetInfo], batch_size: int, ratio: float = 1.0, epochs: int = 1) -> int:
    """Steps of one run: every schedule here drops each dataset's partial batch (schedules.py)."""
    return epochs * sum(subset_size(d.size, ratio) // batch_size for d in datasets)


def task_type_order(datasets: Sequence[DatasetInfo], order: str) -> list[str]:
    """The task types in training order: `order` (must list every present type once), or retrieval first."""
    present = list(dict.fromkeys(d.task_type for d in datasets))
    if not _names(order):
        return sorted(present, key=lambda t: (t != "retrieval", present.index(t)))
    given = _names(order)
    unknown, missing = [t for t in given if t not in present], [t for t in present if t not in given]
    if unknown or missing or len(set(given)) != len(given):
        raise ConfigError(f"config.experiment.task_order={order!r} must list every task type once; "
                                    f"unknown: {unknown}, missing: {missing} (present: {present})")
    return given


def dataset_order(datasets: Sequence[DatasetInfo], order: str) -> list[str]:
    """The dataset names in training order: `order` (every dataset once), or as loaded."""
    present = [d.name for d in datasets]
    if not _names(order):
        return present
    given = _names(order)
    unknown, missing = [n for n in given if n not in present], [n for n in present if n not in given]
    if unknown or missing or len(set(given)) != len(given):
        raise ConfigError(f"config.experiment.dataset_order={order!r} must list every dataset once; "
                                    f"unknown: {unknown}, missing: {missing} (present: {present})")
    return given


def first_stage(datasets: Sequence[DatasetInfo], spec: str) -> list[str]:
    """Datasets of the two-stage run's stage 1: `spec` lists dataset names and/or task types."""
    keys = _names(spec)
    chosen = [d.name for d in datasets if d.name in keys or d.task_type in keys]
    unknown = [k for k in keys if not any(k in (d.name, d.task_type) for d in datasets)]
    if unknown or not chosen or len(chosen) == len(datasets):
        raise ConfigError(
            f"config.experiment.two_stage_first={spec!r} must pick some but not all datasets by name or task "
            f"type (unknown: {unknown}; datasets: {[(d.name, d.task_type) for d in datasets]})")
    return chosen


def incremental_steps(datasets: Sequence[DatasetInfo], incremental: Mapping, batch_size: int,
                      epochs: int = 1) -> tuple[int, int]:
    """Steps of the incremental update's existing model (old data) and update model (new + history)."""
    new = _names(incremental["new_datasets"])
    old = _names(incremental["old_datasets"]) or [d.name for d in datasets if d.name not in new]
    old_infos = [d for d in datasets if d.name in old]
    new_infos = [d for d in datasets if d.name in new]
    history = [dataclasses.replace(d, size=subset_size(d.size, float(incremental["history_ratio"]))) for d in old_infos]
    return (schedule_steps(old_infos, batch_size, epochs=epochs),
            schedule_steps(history + new_infos, batch_size, epochs=epochs))


def make_plan(datasets: Sequence[DatasetInfo], experiment: Mapping, batch_size: int, epochs: int = 1,
              include_base: bool = True, incremental: Mapping | None = None) -> Plan:
    """The runs, merges and rows that `experiment` (the config section) asks for on `datasets`.

    `incremental` (the config's incremental section) only sizes the incremental update's runs."""
    if not datasets:
        raise ConfigError("no training datasets (check config.data.names)")
    strategies = _names(experiment["strategies"])
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ConfigError(f"config.experiment.strategies: unknown {unknown}; choose from {list(STRATEGIES)}")
    by_name = {d.name: d for d in datasets}
    ordered = [by_name[n] for n in dataset_order(datasets, experiment["dataset_order"])]
    types = task_type_order(datasets, experiment["task_order"])

    runs: dict[str, TrainRun] = {}
    # (schedule, datasets) -> run name: a task type with one dataset reuses that dataset's model.
    by_content: dict[tuple, str] = {}

    def add_run(name: str, schedule: str, names: Sequence[str], stage1: Sequence[str] = ()) -> str:
        key = (schedule, tuple(names), tuple(stage1)) if schedule != "bls" else ("bls", frozenset(names))
        if key in by_content:
            return by_content[key]
        infos = [by_name[n] for n in names]
        steps = schedule_steps(infos, batch_size, epochs=epochs)
        if steps == 0:
            raise ConfigError(
                f"run {name!r} would train 0 steps: every dataset of {list(names)} has fewer examples than "
                f"config.train.batch_size={batch_size}; raise config.data.limit or lower the batch size")
        runs[name] = TrainRun(name, schedule, tuple(names), steps, steps * batch_size, tuple(stage1))
        by_content[key] = name
        return name

    boom_sets = "boom" in strategies or "boom_learned" in strategies
    ratio_sets = parse_ratio_sets(experiment["boom_ratio_sets"]) if boom_sets else []
    needed = sorted({r for s in ratio_sets for r in s})
    use_bag_for_bls = "bls" in strategies and bool(experiment["bls_from_bag"])
    if use_bag_for_bls and 1.0 not in needed:
        needed.append(1.0)
    members = tuple(member_name(r) for r in needed)
    member_steps = {}
    for r, m in zip(needed, members):
        member_steps[m] = schedule_steps(datasets, batch_size, ratio=r, epochs=epochs)
        if member_steps[m] == 0:
            raise ConfigError(
                f"bag member {m} would train 0 steps: {r:.0%} of every dataset is fewer than "
                f"config.train.batch_size={batch_size} examples; raise config.data.limit or drop that ratio")

    rows: list[Row] = [Row("base", "pretrained model (no training)", "base")] if include_base else []
    merges: list[MergeRun] = []
    skipped: list[str] = []
    all_names = [d.name for d in ordered]
    for strategy in STRATEGIES:
        if strategy not in strategies:
            continue
        if strategy == "bls":
            source = "r100" if use_bag_for_bls else add_run("bls", "bls", all_names)
            rows.append(Row("bls", "BLS (batch-level shuffling, all data)", source))
        elif strategy == "dataset_sequential":
            rows.append(Row(strategy, "dataset-level sequential", add_run(strategy, strategy, all_names)))
        elif strategy == "task_sequential":
            names = [d.name for t in types for d in ordered if d.task_type == t]
            rows.append(Row(strategy, "task-level sequential", add_run(strategy, strategy, names)))
        elif strategy == "two_stage":
            stage1 = first_stage(ordered, experiment["two_stage_first"])
            names = stage1 + [n for n in all_names if n not in stage1]
            rows.append(Row(strategy, "two-stage", add_run(strategy, strategy, names, stage1)))
        elif strategy == "dataset_merging":
            inputs = tuple(add_run(f"dataset_{n}", "bls", [n]) for n in all_names)
            merges.append(MergeRun(strategy, inputs))
            rows.append(Row(strategy, "dataset-level merging", strategy))
        elif strategy == "task_merging":
            inputs = tuple(add_run(f"task_{t}", "bls", [d.name for d in ordered if d.task_type == t]) for t in types)
            merges.append(MergeRun(strategy, inputs))
            rows.append(Row(strategy, "task-level merging", strategy))
        elif strategy == "task_operators":
            inputs = tuple(add_run(f"task_{t}", "bls", [d.name for d in ordered if d.task_type == t]) for t in types)
            operators = _names(experiment.get("operators", ",".join(OPERATORS)))
            unknown = [o for o in operators if o not in OPERATORS]
            if unknown or not operators:
                raise ConfigError(f"config.experiment.operators: unknown {unknown}; choose from {list(OPERATORS)}")
            for op in operators:
                if op == "slerp" and len(inputs) != 2:
                    skipped.append(f"task_{op}: SLERP merges exactly 2 models, the data has {len(inputs)} task types")
                    continue
                merges.append(MergeRun(f"task_{op}", inputs, method=op))
                rows.append(Row(f"task_{op}", f"task-level merging, {op}", f"task_{op}"))
        elif strategy == "boom_learned":
            ratios = max(ratio_sets, key=len)
            for mode in LEARNED_WEIGHTS:
                label = f"{boom_label(ratios)}_{mode}"
                merges.append(MergeRun(label, tuple(member_name(r) for r in ratios), weights=f"auto:{mode}"))
                pct = ",".join(str(int(round(r * 100))) for r in ratios)
                rows.append(Row(label, f"BOOM {{{pct}}}, weights learned ({mode})", label))
        elif strategy == "boom":
            for ratios in ratio_sets:
                label = boom_label(ratios)
                merges.append(MergeRun(label, tuple(member_name(r) for r in ratios)))
                pct = ",".join(str(int(round(r * 100))) for r in ratios)
                rows.append(Row(label, f"BOOM {{{pct}}}", label))
        elif strategy == "cluster_merging":  # boom_jax.boom.clusters in DIR/runs/cluster_merging
            rows.append(Row(strategy, "cluster-level merging", strategy))
        elif strategy == "incremental":
            rows.append(Row("incremental_existing", "existing model (old data only, before the update)",
                            "incremental_existing"))
            rows.append(Row("incremental", "incremental update (40% history + new data, merged)", "incremental"))
    inc_steps = (0, 0)
    if "incremental" in strategies and incremental is not None:
        inc_steps = incremental_steps(datasets, incremental, batch_size, epochs)
    return Plan(members, tuple(needed), member_steps, tuple(runs.values()), tuple(merges), tuple(rows),
                "incremental" in strategies, batch_size, inc_steps, tuple(skipped),
                cluster="cluster_merging" in strategies)


def format_plan(plan: Plan, bag_dir: str) -> str:
    """A readable list of every training run and merge with its examples (printed at start)."""
    lines = [f"Plan: {len(plan.bag_members) + len(plan.train_runs)} training runs, {len(plan.merges)} merges, "
             f"{len(plan.rows)} models to report (global batch {plan.batch_size})."]
    if plan.bag_members:
        lines.append(f"  bag in {bag_dir}:")
        for m in plan.bag_members:
            lines.append(f"    {m:<28} {plan.member_steps[m]:>6} steps {plan.member_steps[m] * plan.batch_size:>8} examples")
    for r in plan.train_runs:
        extra = f" (stage 1: {', '.join(r.first_stage)})" if r.first_stage else ""
        lines.append(f"  run {r.name:<24} {r.steps:>6} steps {r.examples:>8} examples  {r.schedule} on "
                     f"{', '.join(r.datasets)}{extra}")
    if plan.incremental:
        (old, upd), b = plan.incremental_steps, plan.batch_size
        lines.append(f"  run incremental/existing     {old:>6} steps {old * b:>8} examples  bls on the old datasets")
        lines.append(f"  run incremental/update       {upd:>6} steps {upd * b:>8} examples  bls on new data + history")
    if plan.cluster:
        lines.append("  run cluster_merging           probes per dataset and pair, one model per cluster, merged")
    for m in plan.merges:
        how = ", ".join(x for x in (m.method, m.weights) if x)
        lines.append(f"  merge {m.name:<22} from {', '.join(m.inputs)}" + (f" ({how})" if how else ""))
    for s in plan.skipped:
        lines.append(f"  skipped {s}")
    total = sum(plan.planned_examples().values()) + sum(plan.incremental_steps) * plan.batch_size
    lines.append(f"  total planned training examples: {total}")
    return "\n".join(lines)

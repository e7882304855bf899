"""Runs the comparison's plan: the BOOM bag, the other training runs, the merges, the evaluation, RESULTS.md.

Layout of an experiment workdir (every piece is skipped when finished, so re-running resumes):

    DIR/plan.json                 the plan (runs, datasets, planned examples)
    DIR/boom/                     the bag (members r020..r100), unless config.experiment.bag_workdir
    DIR/runs/<name>/              one train workdir per run, run.json written when it finished
    DIR/runs/<merge>/model/       merged models, run.json with the merge's and its inputs' cost
    DIR/runs/incremental/         boom_jax.boom.incremental's workdir, run.json
    DIR/eval/<label>/results.json dev scores of each reported model
    DIR/RESULTS.md, DIR/results.json, DIR/charts/*.png
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.bag import read_member_record, run_bag
from boom_jax.boom.clusters import PROBE_RECORD, cluster_settings, run_cluster_merge
from boom_jax.boom.incremental import run_incremental
from boom_jax.boom.merge_config import BASE_MODEL, MergeSpec, merge_spec
from boom_jax.boom.merge_weights import heldout_split
from boom_jax.boom.workflow import PLAIN_RUN, ensure_trained, log, merge_and_export, read_record, run_config
from boom_jax.data.records import TrainDataset
from boom_jax.errors import ConfigError
from boom_jax.evaluation.items import load_items
from boom_jax.evaluation.report import load_results
from boom_jax.evaluation.runner import evaluate_dev
from boom_jax.experiments.plan import DatasetInfo, MergeRun, Plan, TrainRun, format_plan, make_plan
from boom_jax.experiments.results import write_results
from boom_jax.merging.methods import MERGE_METHODS
from boom_jax.training.config_validation import validate_config
from boom_jax.training.model_setup import resolve_model_path
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.workdir_lock import holds_workdir_lock

RUN_RECORD = "run.json"
WORKFLOW_SECTIONS = ("experiment", "bag", "incremental", "cluster")
# Settings a reused bag workdir must share with this experiment (else its members are not comparable).
SHARED_SETTINGS = ("seed", "model.path", "model.random_init", "data.source", "data.names", "data.limit",
                   "data.train_group_size", "data.query_max_len", "data.passage_max_len", "train.batch_size",
                   "train.learning_rate", "train.epochs", "train.max_steps", "train.temperature",
                   "train.warmup_ratio")


def training_config(config: ml_collections.ConfigDict, name: str, schedule: str = "bls",
                    first_stage: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A plain training config for one run: the experiment's settings without its workflow sections
    (``first_stage``: the two_stage schedule's stage-1 datasets)."""
    return run_config(config, name, {"data.schedule": schedule,
                                     "data.schedule_options.first_stage": ",".join(first_stage), **PLAIN_RUN},
                      drop=WORKFLOW_SECTIONS)


def dataset_infos(datasets: Sequence[TrainDataset]) -> list[DatasetInfo]:
    return [DatasetInfo(d.name, len(d.examples), d.task_type) for d in datasets]


def experiment_plan(config: ml_collections.ConfigDict, datasets: Sequence[TrainDataset]) -> Plan:
    """The plan for `config` on the loaded datasets."""
    return make_plan(dataset_infos(datasets), config.experiment.to_dict(), int(config.train.batch_size),
                     epochs=int(config.train.epochs), include_base=bool(config.experiment.include_base)
                     and not config.model.random_init,
                     incremental=config.incremental.to_dict() if "incremental" in config else None)


def _run_datasets(run: TrainRun, datasets: Sequence[TrainDataset]) -> list[TrainDataset]:
    """The run's datasets in its order."""
    by_name = {d.name: d for d in datasets}
    return [by_name[n] for n in run.datasets]


def ensure_train_run(config: ml_collections.ConfigDict, workdir: str, run: TrainRun,
                     datasets: Sequence[TrainDataset]) -> dict:
    """Trains (resumes, or skips when run.json exists) one run; returns its cost record."""
    fields = {"name": run.name, "schedule": run.schedule, "datasets": list(run.datasets),
              "first_stage": list(run.first_stage)}
    return ensure_trained(training_config(config, run.name, run.schedule, run.first_stage),
                          os.path.join(workdir, "runs", run.name), _run_datasets(run, datasets),
                          record_file=RUN_RECORD, tag="experiment", label=f"run {run.name}",
                          detail=f": {run.schedule} on {', '.join(run.datasets)} ({run.steps} steps)", fields=fields)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_bag_settings(config: ml_collections.ConfigDict, bag_dir: str, members: Sequence[str]) -> None:
    """A reused bag's members must have been trained with this experiment's settings."""
    mine = _flat(config.to_dict())
    for m in members:
        theirs = read_record(os.path.join(bag_dir, "members", m, "config.json"))
        if theirs is None:
            continue
        theirs = _flat(theirs)
        diff = [f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in SHARED_SETTINGS if theirs.get(k) != mine.get(k)]
        if diff:
            raise ConfigError(
                f"config.experiment.bag_workdir={bag_dir}: member {m} was trained with other settings "
                f"(bag vs experiment): {'; '.join(diff)}")


def ensure_bag(config: ml_collections.ConfigDict, bag_dir: str, plan: Plan,
               datasets: Sequence[TrainDataset]) -> dict[str, dict]:
    """The bag members the plan needs (trained with boom_jax.boom.bag.run_bag unless all finished)."""
    if not plan.bag_members:
        return {}
    check_bag_settings(config, bag_dir, plan.bag_members)
    records = {m: read_member_record(os.path.join(bag_dir, "members", m)) for m in plan.bag_members}
    if any(r is None for r in records.values()):
        bag_config = training_config(config, "boom")
        with bag_config.unlocked():
            bag_config.name = config.name
            bag_config.bag = copy.deepcopy(config.bag)
            bag_config.bag.ratios = tuple(plan.bag_ratios)
            bag_config.bag.evaluate = False  # the experiment evaluates every model together
            bag_config.merge.weights = ""  # the experiment merges (and learns weights) itself
        log("experiment", f"training the BOOM bag in {bag_dir}: members {', '.join(plan.bag_members)}")
        # One member per call (config.bag.member): run_bag trains or skips it and does not merge, since
        # the experiment merges each ratio set itself.
        # With config.bag.stacked all members train in one program (and run_bag merges them too).
        for index in ([-1] if config.bag.stacked else range(len(plan.bag_members))):
            with bag_config.unlocked():
                bag_config.bag.member = index
            run_bag(bag_config, bag_dir, datasets=datasets)
        records = {m: read_member_record(os.path.join(bag_dir, "members", m)) for m in plan.bag_members}
    else:
        log("experiment", f"bag members {', '.join(plan.bag_members)} already finished in {bag_dir}; skipping")
    return records


def ensure_incremental(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset]) -> dict:
    """The incremental update (boom_jax.boom.incremental) in DIR/runs/incremental; returns its cost record."""
    run_dir = os.path.join(workdir, "runs", "incremental")
    record = read_record(os.path.join(run_dir, RUN_RECORD))
    if record is not None:
        log("experiment", "incremental update already finished; skipping")
        return record
    inc_config = training_config(config, "incremental")
    with inc_config.unlocked():
        inc_config.incremental = copy.deepcopy(config.incremental)
        inc_config.incremental.evaluate = False
    start = time.time()
    summary = run_incremental(inc_config, run_dir, datasets=datasets)
    costs, merge = summary["costs"], summary["merge"]
    update = costs["update"]
    record = {"name": "incremental", "steps": update["steps"], "examples": update["examples"],
              "wall_time_s": round(update["wall_time_s"] + merge["wall_time_s"], 2),
              "update": update, "merge_wall_time_s": merge["wall_time_s"], "existing": costs.get("existing"),
              "full_retrain": costs.get("full_retrain"), "old_datasets": summary["old_datasets"],
              "new_datasets": summary["new_datasets"], "history_ratio": float(config.incremental.history_ratio),
              "merge_weights": merge["weights"], "total_wall_time_s": round(time.time() - start, 2),
              "model": os.path.join(run_dir, "merged")}
    write_json(os.path.join(run_dir, RUN_RECORD), record)
    return record


def cluster_run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The cluster workflow's config: the experiment's training settings with its cluster section
    (no evaluation there: the experiment evaluates every row together)."""
    cluster_config = training_config(config, "cluster_merging")
    with cluster_config.unlocked():
        cluster_config.cluster = copy.deepcopy(config.cluster)
        cluster_config.cluster.evaluate = False
    return cluster_config


def ensure_cluster(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset],
                   probes_from: str | None = None) -> dict:
    """Cluster-level merging (boom_jax.boom.clusters) in DIR/runs/cluster_merging; returns its cost record
    (probes + one model per cluster + the merge).

    `probes_from`: another seed's cluster folder whose probes this one reuses (linked, not retrained):
    the probes measure how the datasets interact, from the base model on a fixed dev split, so every
    seed gets the same clusters and retrains only the cluster models; the row's cost still counts them.
    """
    run_dir = os.path.join(workdir, "runs", "cluster_merging")
    record = read_record(os.path.join(run_dir, RUN_RECORD))
    if record is not None:
        log("experiment", "cluster-level merging already finished; skipping")
        return record
    if probes_from is not None and not os.path.exists(os.path.join(run_dir, "probes")):
        os.makedirs(run_dir, exist_ok=True)
        os.symlink(os.path.join(probes_from, "probes"), os.path.join(run_dir, "probes"))
        log("experiment", f"cluster-level merging reuses the probes of {probes_from}")
    report = run_cluster_merge(cluster_run_config(config), run_dir, datasets=datasets)
    probes = [read_record(os.path.join(run_dir, "probes", name, PROBE_RECORD))
              for name in sorted(os.listdir(os.path.join(run_dir, "probes")))]
    models = report["cluster_models"]
    record = {"name": "cluster_merging", "clusters": report["clusters"],
              "steps": sum(int(r["steps"]) for r in [*probes, *models]),
              "examples": sum(int(r["examples"]) for r in [*probes, *models]),
              "probe_steps": sum(int(r["steps"]) for r in probes), "probe_wall_time_s": report["probe_wall_time_s"],
              "merge_wall_time_s": report["merge_wall_time_s"],
              "wall_time_s": round(report["probe_wall_time_s"] + sum(r["wall_time_s"] for r in models)
                                   + report["merge_wall_time_s"], 2),
              "model": report["merged"]}
    write_json(os.path.join(run_dir, RUN_RECORD), record)
    return record


def merge_run_spec(config: ml_collections.ConfigDict, merge: MergeRun, num_models: int | None = None) -> MergeSpec:
    """config.merge as one planned merge applies it: an operator of the study (its mergekit defaults,
    the training base model for the task-vector operators) and/or learned weights."""
    c = copy.deepcopy(config)
    with c.unlocked():
        if merge.method:
            c.merge.method = merge.method
            c.merge.params = ml_collections.ConfigDict()
            c.merge.weights = ""
            c.merge.base = BASE_MODEL if MERGE_METHODS[merge.method].needs_base else ""
        if merge.weights:
            c.merge.weights = merge.weights
    return merge_spec(c, num_models, allow_auto=True)


def ensure_merge(config: ml_collections.ConfigDict, workdir: str, merge: MergeRun, records: dict[str, dict],
                 heldout: Sequence[TrainDataset] | None = None) -> dict:
    """Merges the inputs' models into DIR/runs/<name>/model unless already done (config.merge, or the
    merge's operator; learned weights are scored on `heldout`)."""
    run_dir = os.path.join(workdir, "runs", merge.name)
    record = read_record(os.path.join(run_dir, RUN_RECORD))
    if record is not None:
        log("experiment", f"merge {merge.name} already done; skipping")
        return record
    inputs = [records[n] for n in merge.inputs]
    os.makedirs(run_dir, exist_ok=True)
    spec = merge_run_spec(config, merge, len(inputs))
    log("experiment", f"merging {merge.name} ({spec.method}) from {', '.join(merge.inputs)}")
    done = merge_and_export(config, spec, {n: r["model"] for n, r in zip(merge.inputs, inputs)},
                            os.path.join(run_dir, "model"), workdir, tag="experiment", heldout=heldout)
    record = {"name": merge.name, "inputs": list(merge.inputs), "method": spec.method, "weights": done["weights"],
              "params": spec.params, "base": spec.base, "learned": done.get("learned"),
              "steps": sum(r["steps"] for r in inputs), "examples": sum(r["examples"] for r in inputs),
              "merge_wall_time_s": done["wall_time_s"],
              "wall_time_s": round(sum(r["wall_time_s"] for r in inputs) + done["wall_time_s"], 2),
              "model": os.path.join(run_dir, "model")}
    write_json(os.path.join(run_dir, RUN_RECORD), record)
    return record


def evaluate_rows(config: ml_collections.ConfigDict, folders: Mapping[str, str], models: dict[str, str]) -> dict:
    """Dev scores of every model, one <folders[label]>/eval/<label>/ each (a finished label is read back,
    not redone).

    Tasks: config.experiment.eval_tasks, capped by config.eval (max_queries, max_documents, max_texts,
    max_seq_length) as boom_jax.evaluation.runner.evaluate_dev applies them.
    """
    results = {}
    for label, path in models.items():
        out = os.path.join(folders[label], "eval", label)
        if os.path.exists(os.path.join(out, "results.json")):
            log("experiment", f"{label} already evaluated; reading {out}/results.json")
            results[label] = load_results(out)[label]
            continue
        log("experiment", f"evaluating {label} ({path})")
        results[label] = evaluate_dev(training_config(config, "eval"), {label: path}, out,
                                      tasks=config.experiment.eval_tasks)[label]
    return results


def row_records(plan: Plan, records: dict[str, dict]) -> list[dict]:
    """One table row per reported model: label, strategy, source, steps, examples, wall time, model path."""
    rows = []
    for row in plan.rows:
        rec = records.get(row.source) or {}
        rows.append({"label": row.label, "strategy": row.strategy, "source": row.source,
                     "steps": rec.get("steps", 0), "examples": rec.get("examples", 0),
                     "wall_time_s": rec.get("wall_time_s", 0.0), "model": rec.get("model")})
    return rows


def experiment_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The training seeds of the comparison: config.seed, config.seed + 1, ... (config.experiment.seeds of them)."""
    n = config.experiment.get("seeds", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"config.experiment.seeds={n!r}: expected a whole number >= 1 (training runs per strategy)")
    return [int(config.seed) + k for k in range(n)]


def seed_config(config: ml_collections.ConfigDict, offset: int) -> ml_collections.ConfigDict:
    """The experiment's config for its `offset`-th seed: training seed, bag sampling seed and incremental
    history seed all moved by `offset` (the data, the dev split of the cluster probes and the evaluation
    samples stay the same, so every seed is scored on the same items)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.seed = int(config.seed) + offset
        if "bag" in c:
            c.bag.seed = int(config.bag.seed) + offset
        if "incremental" in c:
            c.incremental.history_seed = int(config.incremental.history_seed) + offset
        if offset and c.experiment.bag_workdir:  # a reused bag holds one seed's members
            c.experiment.bag_workdir = ""
    return c


def seed_workdir(workdir: str, seeds: Sequence[int], seed: int) -> str:
    """Where one seed's runs live: DIR itself for a one-seed experiment, else DIR/seed_<seed>."""
    return workdir if len(seeds) == 1 else os.path.join(workdir, f"seed_{seed}")


def run_seed(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset],
             shared_eval: str, probes_from: str | None = None) -> dict:
    """Trains, merges and evaluates every row of the plan for one seed in `workdir`; returns its rows,
    cost records, dev scores and item scores (rows that need no training, the pretrained model, are
    evaluated once in `shared_eval`; `probes_from`: see ensure_cluster)."""
    plan = experiment_plan(config, datasets)
    heldout = None
    if plan.learned:  # learned merge weights: every run trains without the held-out examples
        datasets, heldout = heldout_split(datasets, int(config.merge.heldout_examples), int(config.seed),
                                          min_train=int(config.train.batch_size))
        plan = experiment_plan(config, datasets)
    for merge in plan.merges:  # every merge's method, weights and parameters, before any training
        merge_run_spec(config, merge, len(merge.inputs))
    bag_dir = os.path.abspath(config.experiment.bag_workdir or os.path.join(workdir, "boom"))
    log("experiment", f"seed {config.seed}: " + format_plan(plan, bag_dir))
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    write_json(os.path.join(workdir, "plan.json"), {
        "seed": int(config.seed), "bag_dir": bag_dir, "bag_members": list(plan.bag_members),
        "member_steps": dict(plan.member_steps), "train_runs": [dataclasses.asdict(r) for r in plan.train_runs],
        "merges": [dataclasses.asdict(m) for m in plan.merges], "rows": [dataclasses.asdict(r) for r in plan.rows],
        "incremental": plan.incremental, "cluster": plan.cluster,
        "datasets": [dataclasses.asdict(d) for d in dataset_infos(datasets)]})

    records: dict[str, dict] = dict(ensure_bag(config, bag_dir, plan, datasets))
    for i, run in enumerate(plan.train_runs):
        log("experiment", f"seed {config.seed}: run {i + 1}/{len(plan.train_runs)}")
        records[run.name] = ensure_train_run(config, workdir, run, datasets)
    if plan.incremental:
        records["incremental"] = ensure_incremental(config, workdir, datasets)
        if records["incremental"].get("existing"):
            records["incremental_existing"] = records["incremental"]["existing"]
    if plan.cluster:
        records["cluster_merging"] = ensure_cluster(config, workdir, datasets, probes_from)
    for merge in plan.merges:
        records[merge.name] = ensure_merge(config, workdir, merge, records, heldout)
    if any(r.label == "base" for r in plan.rows):
        records["base"] = {"steps": 0, "examples": 0, "wall_time_s": 0.0,
                           "model": resolve_model_path(config.model.path)}
    rows = row_records(plan, records)
    results = items = None
    if config.experiment.evaluate:
        folders = {r["label"]: shared_eval if r["label"] == "base" else workdir for r in rows}
        results = evaluate_rows(config, folders, {r["label"]: r["model"] for r in rows})
        items = {label: load_items(os.path.join(folder, "eval", label), label) for label, folder in folders.items()}
    return {"seed": int(config.seed), "rows": rows, "records": records, "results": results, "items": items,
            "bag_dir": bag_dir, "datasets": dataset_infos(datasets)}


@holds_workdir_lock  # one run of this workflow per workdir
def run_experiment(config: ml_collections.ConfigDict, workdir: str, command: str | None = None,
                   datasets: Sequence[TrainDataset] | None = None) -> dict:
    """Runs (or resumes) the whole comparison, once per seed, and writes DIR/RESULTS.md; returns the
    results summary."""
    workdir = os.path.abspath(workdir)
    validate_config(training_config(config, "check"))
    seeds = experiment_seeds(config)
    if datasets is None:
        datasets = load_train_datasets(training_config(config, "data"))
    plan = experiment_plan(config, datasets)  # bad strategies, orders or sizes fail here, before any training
    if plan.cluster:
        cluster_settings(cluster_run_config(config))
    start = time.time()
    runs = []
    for k, seed in enumerate(seeds):
        if len(seeds) > 1:
            log("experiment", f"seed {k + 1}/{len(seeds)} (seed {seed})")
        first = os.path.join(seed_workdir(workdir, seeds, seeds[0]), "runs", "cluster_merging")
        runs.append(run_seed(seed_config(config, k), seed_workdir(workdir, seeds, seed), datasets, workdir,
                             probes_from=first if k else None))
    log("experiment", f"training, merging and evaluation took {time.time() - start:.0f} s")
    command = command or (f"python -m boom_jax.experiments --config=configs/experiment.py --workdir={workdir}")
    return write_results(workdir, config, runs, command)

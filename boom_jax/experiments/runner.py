"""Runs the comparison's plan: the BOOM bag, the other training runs, the merges, the evaluation, RESULTS.md.

Layout of an experiment workdir (every piece is skipped when finished, so re-running resumes):

    DIR/plan.json                 the plan (runs, datasets, planned examples)
    DIR/boom/                     the bag (members r020..r100), unless config.experiment.bag_workdir
    DIR/runs/<name>/              one train workdir per run, run.json written when it finished
    DIR/runs/<merge>/model/       merged models, run.json with the merge's and its inputs' cost
    DIR/runs/incremental/         boom_jax.boom.incremental's workdir, run.json
    DIR/eval/<label>/results.json dev scores of each reported model
    DIR/RESULTS.md, DIR/results.json, DIR/charts/*.png

With config.experiment.seeds > 1 each seed has this layout in DIR/seed_<seed>/ (experiments/seeds.py),
the pretrained model is evaluated once in DIR/eval/base and DIR/RESULTS.md covers every seed. The
bag, incremental and cluster rows come from their own workflows (experiments/workflow_rows.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.clusters import cluster_settings
from boom_jax.boom.merge_config import BASE_MODEL, MergeSpec, merge_spec
from boom_jax.boom.merge_weights import heldout_split
from boom_jax.boom.workflow import ensure_trained, log, merge_and_export, read_record
from boom_jax.data.records import TrainDataset
from boom_jax.evaluation.items import load_items
from boom_jax.evaluation.report import load_results
from boom_jax.evaluation.runner import evaluate_dev
from boom_jax.experiments.plan import DatasetInfo, MergeRun, Plan, TrainRun, format_plan, make_plan
from boom_jax.experiments.results import write_results
from boom_jax.experiments.seeds import experiment_seeds, seed_config, seed_workdir
from boom_jax.experiments.workflow_rows import (RUN_RECORD, cluster_run_config, ensure_bag, ensure_cluster,
                                                ensure_incremental, training_config)
from boom_jax.merging.methods import MERGE_METHODS
from boom_jax.training.config_validation import validate_config
from boom_jax.training.model_setup import resolve_model_path
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.workdir_lock import holds_workdir_lock

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
    first_cluster = os.path.join(seed_workdir(workdir, seeds, seeds[0]), "runs", "cluster_merging")
    for k, seed in enumerate(seeds):
        if len(seeds) > 1:
            log("experiment", f"seed {k + 1}/{len(seeds)} (seed {seed})")
        runs.append(run_seed(seed_config(config, k), seed_workdir(workdir, seeds, seed), datasets, workdir,
                             probes_from=first_cluster if k else None))
    log("experiment", f"training, merging and evaluation took {time.time() - start:.0f} s")
    command = command or (f"python -m boom_jax.experiments --config=configs/experiment.py --workdir={workdir}")
    return write_results(workdir, config, runs, command)

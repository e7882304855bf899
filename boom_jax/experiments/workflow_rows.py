"""The experiment's rows that other BOOM workflows produce: the bag (boom_jax.boom.bag), the incremental
update (boom_jax.boom.incremental) and cluster-level merging (boom_jax.boom.clusters), each trained or
read back from its record, plus the plain training config every experiment run derives from.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.bag import read_member_record, run_bag
from boom_jax.boom.clusters import PROBE_RECORD, run_cluster_merge
from boom_jax.boom.incremental import run_incremental
from boom_jax.boom.workflow import PLAIN_RUN, log, read_record, run_config
from boom_jax.data.records import TrainDataset
from boom_jax.errors import ConfigError
from boom_jax.experiments.plan import Plan

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

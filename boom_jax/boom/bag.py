"""A BOOM bag: members trained on per-dataset subsets of the corpus, merged into one model.

Layout of a bag workdir (every piece is self-describing and resumable):

    DIR/bag.json                    the bag's plan: members, ratios, seeds, merge method
    DIR/members/<name>/             one train workdir per member (checkpoints, metrics, model/, ...)
    DIR/members/<name>/member.json  written when the member finished: steps, examples, wall time
    DIR/merged/                     the merged model folder
    DIR/export/                     the merged model as a sentence-transformers folder
    DIR/eval/                       dev scores of the base model, every member and the merged model
    DIR/summary.md, summary.json    the table of all of the above

Re-running the same command skips finished members (their member.json exists), resumes an
unfinished one from its latest checkpoint, and redoes the merge and the summary.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.merge_config import merge_spec
from boom_jax.boom.merge_weights import heldout_split
from boom_jax.boom.provenance import member_entry, write_merged_card
from boom_jax.boom.workflow import (ensure_trained, evaluate, log, merge_and_export, read_record, run_config,
                                    score_table, scored, write_summary)
from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import SubsetManifest, member_seed, sample_subsets
from boom_jax.errors import ConfigError
from boom_jax.training.stacked import StackedMember, train_stacked
from boom_jax.training.train_data import load_train_datasets

MEMBER_RECORD = "member.json"


@dataclasses.dataclass(frozen=True)
class Member:
    """One bag member: its position, name, sampling ratio and sampling seed."""

    index: int
    name: str
    ratio: float
    seed: int


def member_name(ratio: float) -> str:
    """'r020' for 0.2, 'r100' for 1.0: sortable, and readable as a percentage."""
    return f"r{int(round(ratio * 100)):03d}"


def bag_members(bag: ml_collections.ConfigDict) -> list[Member]:
    """The members that config.bag describes, in ratio order as given."""
    ratios = [float(r) for r in bag.ratios]
    if not ratios:
        raise ConfigError("config.bag.ratios is empty; give at least one sampling ratio, e.g. (0.8, 1.0)")
    for r in ratios:
        if not 0.0 < r <= 1.0:
            raise ConfigError(f"config.bag.ratios: {r} is not in (0, 1]")
    names = [member_name(r) for r in ratios]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.bag.ratios has repeated ratios: {ratios}")
    if not -1 <= bag.member < len(ratios):
        raise ConfigError(f"config.bag.member={bag.member} must be -1 (all) or in [0, {len(ratios) - 1}]")
    if bag.sampling not in ("without_replacement", "with_replacement", "pooled"):
        raise ConfigError(
            f"config.bag.sampling={bag.sampling!r}: expected without_replacement, with_replacement or pooled")
    return [Member(i, n, r, member_seed(bag.seed, i)) for i, (n, r) in enumerate(zip(names, ratios))]


def member_subset(datasets: Sequence[TrainDataset], member: Member, sampling: str) -> SubsetManifest:
    """The member's per-dataset subset (the 100% member without replacement sees every example)."""
    return sample_subsets(datasets, member.ratio, member.seed,
                          replace=sampling == "with_replacement", pooled=sampling == "pooled")


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The member's training config: the bag's own, with its ratio and seed recorded."""
    return run_config(config, member.name, {"data.subset_ratio": member.ratio, "data.subset_seed": member.seed})


def member_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, "members", name)


def read_member_record(folder: str) -> dict | None:
    """The member's record (FOLDER/member.json), or None while it has not finished."""
    return read_record(os.path.join(folder, MEMBER_RECORD))


def train_member(config: ml_collections.ConfigDict, workdir: str, member: Member,
                 datasets: Sequence[TrainDataset]) -> dict:
    """Trains (or resumes, or skips when finished) one member; returns its record."""
    subset = member_subset(datasets, member, config.bag.sampling)
    fields = {"name": member.name, "index": member.index, "ratio": member.ratio, "seed": member.seed,
              "subset_examples": int(sum(len(v) for v in subset.indices.values()))}
    return ensure_trained(member_config(config, member), member_dir(workdir, member.name), datasets,
                          record_file=MEMBER_RECORD, tag="bag", label=f"member {member.name}",
                          detail=f" (ratio {member.ratio:g}, seed {member.seed})", subset=subset, fields=fields)


def train_members_stacked(config: ml_collections.ConfigDict, workdir: str, members: Sequence[Member],
                          datasets: Sequence[TrainDataset]) -> list[dict]:
    """Trains the unfinished members together in one program (boom_jax.training.stacked)."""
    done = {m.name: read_member_record(member_dir(workdir, m.name)) for m in members}
    todo = [m for m in members if done[m.name] is None]
    if todo:
        log("bag", f"training members {', '.join(m.name for m in todo)} together (stacked)")
        stacked = [StackedMember(m.name, member_config(config, m), member_subset(datasets, m, config.bag.sampling))
                   for m in todo]
        for m, record in zip(todo, train_stacked(config, workdir, stacked, datasets)):
            record.update(index=m.index, ratio=m.ratio, seed=m.seed)
            write_json(os.path.join(member_dir(workdir, m.name), MEMBER_RECORD), record)
            done[m.name] = record
    return [done[m.name] for m in members]


def merge_members(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict],
                  heldout: Sequence[TrainDataset] | None = None) -> dict:
    """Merges the finished members as config.merge says into DIR/merged (model folder, recipe.yml) and
    DIR/export (sentence-transformers); learned weights (merge.weights="auto:...") are scored on
    `heldout`. Returns the merge record (method, weights used, learned weights' losses, wall time)."""
    return merge_and_export(config, merge_spec(config, len(records), allow_auto=True),
                            {r["name"]: r["model"] for r in records}, os.path.join(workdir, "merged"), workdir,
                            tag="bag", heldout=heldout, export=os.path.join(workdir, "export"))


def write_bag_card(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict], merge: dict,
                   results: dict | None, datasets: Sequence[TrainDataset]) -> None:
    """DIR/export's README.md and boom.json: the bag's members (ratios, seeds, manifest hashes, dev
    scores), the merge and the merged model's dev scores."""
    members = [member_entry(r, member_dir(workdir, r["name"]), workdir, results) for r in records]
    write_merged_card(config, "merged", workdir, datasets, members,
                      {k: merge[k] for k in ("method", "weights", "params", "base")}, results=results,
                      wall_time_s=sum(r["wall_time_s"] for r in records) + merge["wall_time_s"])


def bag_summary(workdir: str, records: Sequence[dict], results: dict | None, merge: dict) -> dict:
    """DIR/summary.json and DIR/summary.md: cost and dev scores of every member and the merged model."""
    costs = [{"model": "base", "steps": 0, "examples": 0, "wall_time_s": 0.0}]
    costs += [{"model": r["name"], "steps": r["steps"], "examples": r["examples"], "wall_time_s": r["wall_time_s"]}
              for r in records]
    costs.append({"model": "merged", "steps": sum(r["steps"] for r in records),
                  "examples": sum(r["examples"] for r in records),
                  "wall_time_s": round(sum(r["wall_time_s"] for r in records) + merge["wall_time_s"], 2)})
    rows = scored(costs, results)
    summary = {"members": list(records), "merge": merge, "models": rows, "scores": results or {}}
    write_summary(workdir, "bag", [
        "# BOOM bag summary", "",
        f"Merge: {merge['method']} over {len(records)} members, weights {merge['weights'] or 'equal'}.",
        "Scores are means of the built-in dev tasks' main scores (x100); cost of `merged` is the sum",
        "of its members' plus the merge.", "", *score_table(rows)], summary)
    return summary


def run_bag(config: ml_collections.ConfigDict, workdir: str,
            datasets: Sequence[TrainDataset] | None = None) -> dict | None:
    """Trains the bag's members (all, or config.bag.member only), merges and evaluates them.

    Returns the summary, or None when only one member was asked for (a parallel launch: merge later
    with `python -m boom_jax.merge` or by re-running without --config.bag.member).
    """
    workdir = os.path.abspath(workdir)
    members = bag_members(config.bag)
    spec = merge_spec(config, len(members), allow_auto=True)  # before any training
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "bag.json"), {
        "members": [dataclasses.asdict(m) for m in members], "sampling": config.bag.sampling,
        "seed": config.bag.seed, "merge": spec.record(), "base_model": config.model.path})
    if datasets is None:
        datasets = load_train_datasets(config)
    heldout = None
    if spec.auto:  # learned weights: held-out examples that no member trains on
        datasets, heldout = heldout_split(datasets, spec.heldout_examples, config.bag.seed,
                                          min_train=int(config.train.batch_size))
    if config.bag.member >= 0:
        train_member(config, workdir, members[config.bag.member], datasets)
        return None
    if config.bag.stacked:
        records = train_members_stacked(config, workdir, members, datasets)
    else:
        records = [train_member(config, workdir, m, datasets) for m in members]
    merge = merge_members(config, workdir, records, heldout)
    results = None
    if config.bag.evaluate:
        models = {**{r["name"]: r["model"] for r in records}, "merged": os.path.join(workdir, "merged")}
        results = evaluate(config, models, os.path.join(workdir, "eval"), config.bag.eval_tasks)
    write_bag_card(config, workdir, records, merge, results, datasets)
    return bag_summary(workdir, records, results, merge)

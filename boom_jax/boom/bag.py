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

import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.merge_config import merge, merge_spec
from boom_jax.boom.merge_weights import heldout_split, learn_weights
from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import SubsetManifest, member_seed, sample_subsets

MEMBER_RECORD = "member.json"


class BagConfigError(ValueError):
    """A bag section that cannot run; the message names the key."""


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
        raise BagConfigError("config.bag.ratios is empty; give at least one sampling ratio, e.g. (0.8, 1.0)")
    for r in ratios:
        if not 0.0 < r <= 1.0:
            raise BagConfigError(f"config.bag.ratios: {r} is not in (0, 1]")
    names = [member_name(r) for r in ratios]
    if len(set(names)) != len(names):
        raise BagConfigError(f"config.bag.ratios has repeated ratios: {ratios}")
    if not -1 <= bag.member < len(ratios):
        raise BagConfigError(f"config.bag.member={bag.member} must be -1 (all) or in [0, {len(ratios) - 1}]")
    if bag.sampling not in ("without_replacement", "with_replacement", "pooled"):
        raise BagConfigError(
            f"config.bag.sampling={bag.sampling!r}: expected without_replacement, with_replacement or pooled")
    return [Member(i, n, r, member_seed(bag.seed, i)) for i, (n, r) in enumerate(zip(names, ratios))]


def member_subset(datasets: Sequence[TrainDataset], member: Member, sampling: str) -> SubsetManifest:
    """The member's per-dataset subset (the 100% member without replacement sees every example)."""
    return sample_subsets(datasets, member.ratio, member.seed,
                          replace=sampling == "with_replacement", pooled=sampling == "pooled")


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The member's training config: the bag's own, with its ratio and seed recorded."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.name = f"{config.name}/{member.name}"
        c.data.subset_ratio = member.ratio
        c.data.subset_seed = member.seed
    return c


def read_member_record(member_dir: str) -> dict | None:
    path = os.path.join(member_dir, MEMBER_RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_member(config: ml_collections.ConfigDict, workdir: str, member: Member,
                 datasets: Sequence[TrainDataset]) -> dict:
    """Trains (or resumes, or skips when finished) one member; returns its record."""
    from boom_jax.training.loop import train

    member_dir = os.path.join(workdir, "members", member.name)
    record = read_member_record(member_dir)
    if record is not None:
        print(f"[bag] member {member.name} already finished ({record['steps']} steps); skipping")
        return record
    print(f"[bag] training member {member.name} (ratio {member.ratio:g}, seed {member.seed})")
    mconfig = member_config(config, member)
    subset = member_subset(datasets, member, config.bag.sampling)
    start = time.time()
    result = train(mconfig, member_dir, datasets=datasets, subset=subset)
    if result.preempted:
        raise SystemExit(f"[bag] member {member.name} was preempted at step {result.steps}; re-run to resume")
    record = {
        "name": member.name, "index": member.index, "ratio": member.ratio, "seed": member.seed,
        "steps": int(result.steps), "examples": int(result.steps) * int(config.train.batch_size),
        "subset_examples": int(sum(len(v) for v in subset.indices.values())),
        "wall_time_s": round(time.time() - start, 2), "final_loss": float(result.final_loss),
        "model": os.path.join(member_dir, "model"),
    }
    write_json(os.path.join(member_dir, MEMBER_RECORD), record)
    return record


def train_members_stacked(config: ml_collections.ConfigDict, workdir: str, members: Sequence[Member],
                          datasets: Sequence[TrainDataset]) -> list[dict]:
    """Trains the unfinished members together in one program (boom_jax.training.stacked)."""
    from boom_jax.training.stacked import StackedMember, train_stacked

    done = {m.name: read_member_record(os.path.join(workdir, "members", m.name)) for m in members}
    todo = [m for m in members if done[m.name] is None]
    if todo:
        print(f"[bag] training members {', '.join(m.name for m in todo)} together (stacked)")
        stacked = [StackedMember(m.name, member_config(config, m), member_subset(datasets, m, config.bag.sampling))
                   for m in todo]
        for m, record in zip(todo, train_stacked(config, workdir, stacked, datasets)):
            record.update(index=m.index, ratio=m.ratio, seed=m.seed)
            write_json(os.path.join(workdir, "members", m.name, MEMBER_RECORD), record)
            done[m.name] = record
    return [done[m.name] for m in members]


def merge_members(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict],
                  heldout: Sequence[TrainDataset] | None = None) -> dict:
    """Merges the finished members as config.merge says into DIR/merged (model folder, recipe.yml) and
    DIR/export (sentence-transformers); learned weights (merge.weights="auto:...") are scored on
    `heldout`. Returns the merge record (method, weights used, learned weights' losses, wall time)."""
    spec = merge_spec(config, len(records), allow_auto=True)
    start = time.time()
    learned = None
    if spec.auto:
        if heldout is None:
            raise BagConfigError("learned merge weights need the held-out examples (run the whole bag)")
        learned = learn_weights(config, spec, [r["model"] for r in records], heldout, workdir)
        print(f"[bag] learned merge weights ({spec.auto}): "
              + ", ".join(f"{r['name']} {w:.3f}" for r, w in zip(records, learned["weights"])))
    record = merge(config, spec, [r["model"] for r in records], os.path.join(workdir, "merged"), workdir,
                   weights=None if learned is None else learned["weights"])
    _export(os.path.join(workdir, "merged"), os.path.join(workdir, "export"))
    record["wall_time_s"] = round(time.time() - start, 2)
    if learned is not None:
        record["learned"] = learned
    return record


def _export(model_folder: str, out: str) -> None:
    from boom_jax.hf import export_sentence_transformers
    from boom_jax.model_io import load_model

    cfg, params, tokenizer_dir = load_model(model_folder)
    export_sentence_transformers(params, cfg, tokenizer_dir, out, overwrite=True)


def write_bag_card(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict], merge: dict,
                   results: dict | None, datasets: Sequence[TrainDataset]) -> None:
    """DIR/export's README.md and boom.json: the bag's members (ratios, seeds, manifest hashes, dev
    scores), the merge and the merged model's dev scores."""
    from boom_jax.boom.provenance import member_entry, merged_provenance, write_export_card
    from boom_jax.training.loop import resolve_model_path

    members = [member_entry(r, os.path.join(workdir, "members", r["name"]), workdir, results) for r in records]
    params = {"method": merge["method"], "weights": merge["weights"], "params": merge["params"], "base": merge["base"]}
    provenance = merged_provenance(config, "merged", datasets, members, params,
                                   model_dir=resolve_model_path(config.model.path), results=results,
                                   wall_time_s=sum(r["wall_time_s"] for r in records) + merge["wall_time_s"])
    write_export_card(os.path.join(workdir, "export"), provenance)


def evaluate_bag(config: ml_collections.ConfigDict, workdir: str, models: dict[str, str]) -> dict:
    """Dev scores (built-in in-domain and out-of-domain tasks) of every model, in DIR/eval."""
    from boom_jax.evaluation.runner import evaluate_dev

    return evaluate_dev(config, models, os.path.join(workdir, "eval"), config.bag.eval_tasks)


def write_summary(workdir: str, records: Sequence[dict], results: dict | None, merge: dict) -> dict:
    """DIR/summary.json and DIR/summary.md: cost and dev scores of every member and the merged model."""
    from boom_jax.evaluation.report import summarize

    means = summarize(results) if results else {}
    rows = []
    for label in ["base"] + [r["name"] for r in records] + ["merged"]:
        rec = next((r for r in records if r["name"] == label), None)
        row = {"model": label, "steps": rec["steps"] if rec else 0, "examples": rec["examples"] if rec else 0,
               "wall_time_s": rec["wall_time_s"] if rec else 0.0}
        if label == "merged":
            row.update(steps=sum(r["steps"] for r in records), examples=sum(r["examples"] for r in records),
                       wall_time_s=round(sum(r["wall_time_s"] for r in records) + merge["wall_time_s"], 2))
        m = means.get(label, {})
        row["in_domain"] = m.get("in_domain_mean")
        row["out_of_domain"] = m.get("out_of_domain_mean")
        row["mean"] = m.get("mean")
        rows.append(row)
    summary = {"members": list(records), "merge": merge, "models": rows, "scores": results or {}}
    write_json(os.path.join(workdir, "summary.json"), summary)

    def fmt(x):
        return "-" if x is None else f"{100 * x:.2f}"

    lines = ["# BOOM bag summary", "",
             f"Merge: {merge['method']} over {len(records)} members, weights {merge['weights'] or 'equal'}.",
             "Scores are means of the built-in dev tasks' main scores (x100); cost of `merged` is the sum",
             "of its members' plus the merge.", "",
             "| model | steps | examples | wall time (s) | in-domain | out-of-domain | all |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['steps']} | {r['examples']} | {r['wall_time_s']:.1f} | "
                     f"{fmt(r['in_domain'])} | {fmt(r['out_of_domain'])} | {fmt(r['mean'])} |")
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


def run_bag(config: ml_collections.ConfigDict, workdir: str,
            datasets: Sequence[TrainDataset] | None = None) -> dict | None:
    """Trains the bag's members (all, or config.bag.member only), merges and evaluates them.

    Returns the summary, or None when only one member was asked for (a parallel launch: merge later
    with `python -m boom_jax.merge` or by re-running without --config.bag.member).
    """
    from boom_jax.training.loop import load_train_datasets, resolve_model_path

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
        models = {}
        if not config.model.random_init:
            models["base"] = resolve_model_path(config.model.path)
        models.update({r["name"]: r["model"] for r in records})
        models["merged"] = os.path.join(workdir, "merged")
        results = evaluate_bag(config, workdir, models)
    write_bag_card(config, workdir, records, merge, results, datasets)
    summary = write_summary(workdir, records, results, merge)
    with open(os.path.join(workdir, "summary.md")) as f:
        print(f.read())
    return summary

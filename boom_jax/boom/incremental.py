"""Incremental updates: fold new datasets into an existing model without retraining on everything.

The recipe (PAPER.md): sample a historical subset of the old data (default 40%, per-dataset
proportions, saved and reused across updates), train an *update model* on the new data plus that
subset (from the base model by default), and merge it into the existing model (Multi-SLERP 0.5/0.5).

Layout of an incremental workdir:

    DIR/existing/        the existing model, trained here on the old data when none is given
    DIR/history.json     the historical subset (a SubsetManifest), reused by later updates
    DIR/update/          the update model's train workdir
    DIR/merged/, DIR/export/   the updated model (model folder, sentence-transformers folder)
    DIR/full_retrain/    optional: a full retrain on old + new data, the reference it is compared with
    DIR/eval/, DIR/summary.md, DIR/summary.json
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence

import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.boom.merge_config import merge, merge_spec
from boom_jax.data.records import TrainDataset
from boom_jax.training.workdir_lock import holds_workdir_lock
from boom_jax.data.sampling import SubsetManifest, combine_incremental

HISTORY_FILE = "history.json"


class IncrementalConfigError(ValueError):
    """An incremental section that cannot run; the message names the key."""


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def split_old_new(config: ml_collections.ConfigDict,
                  datasets: Sequence[TrainDataset]) -> tuple[list[TrainDataset], list[TrainDataset]]:
    """The old and new datasets that config.incremental names (new ones must not overlap old ones)."""
    inc = config.incremental
    by_name = {d.name: d for d in datasets}
    new_names = _names(inc.new_datasets)
    if not new_names:
        raise IncrementalConfigError("config.incremental.new_datasets is empty: name the new datasets")
    old_names = _names(inc.old_datasets) or [n for n in by_name if n not in new_names]
    for key, names in (("old_datasets", old_names), ("new_datasets", new_names)):
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise IncrementalConfigError(
                f"config.incremental.{key}: unknown datasets {unknown}; available: {sorted(by_name)}")
    overlap = sorted(set(old_names) & set(new_names))
    if overlap:
        raise IncrementalConfigError(f"config.incremental: {overlap} are both old and new datasets")
    return [by_name[n] for n in old_names], [by_name[n] for n in new_names]


def _run_config(config: ml_collections.ConfigDict, name: str, model_path: str | None = None) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    with c.unlocked():
        c.name = f"{config.name}/{name}"
        if model_path is not None:
            c.model.path = model_path
        c.export.sentence_transformers = False
    return c


def _train(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset]) -> dict:
    """Trains one model (resuming if interrupted, skipping if finished) and returns its cost record."""
    from boom_jax.training.loop import train

    record_path = os.path.join(workdir, "cost.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            return json.load(f)
    start = time.time()
    result = train(config, workdir, datasets=list(datasets))
    if result.preempted:
        raise SystemExit(f"[incremental] {workdir} was preempted at step {result.steps}; re-run to resume")
    record = {"steps": int(result.steps), "examples": int(result.steps) * int(config.train.batch_size),
              "wall_time_s": round(time.time() - start, 2), "model": os.path.join(workdir, "model")}
    write_json(record_path, record)
    return record


def load_or_sample_history(workdir: str, old: Sequence[TrainDataset], ratio: float, seed: int) -> SubsetManifest:
    """The historical subset: read from DIR/history.json when an earlier update saved it, else drawn."""
    path = os.path.join(workdir, HISTORY_FILE)
    if os.path.exists(path):
        return SubsetManifest.load(path)
    _, manifest = combine_incremental(old, [], ratio=ratio, seed=seed)
    manifest.save(path)
    return manifest


@holds_workdir_lock  # one run of this workflow per workdir
def run_incremental(config: ml_collections.ConfigDict, workdir: str,
                    datasets: Sequence[TrainDataset] | None = None) -> dict:
    """Runs the whole update (existing model, update model, merge, optional full retrain, evaluation)."""
    from boom_jax.boom.bag import _export
    from boom_jax.evaluation.runner import evaluate_dev
    from boom_jax.evaluation.report import summarize
    from boom_jax.training.loop import load_train_datasets, resolve_model_path

    inc = config.incremental
    spec = merge_spec(config, 2)  # (existing, update), checked before any training
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if datasets is None:
        datasets = load_train_datasets(config)
    old, new = split_old_new(config, datasets)
    costs: dict[str, dict] = {}

    existing = inc.existing
    if not existing:
        print("[incremental] no existing model given: training one on the old datasets")
        costs["existing"] = _train(_run_config(config, "existing"), os.path.join(workdir, "existing"), old)
        existing = costs["existing"]["model"]

    history = load_or_sample_history(workdir, old, inc.history_ratio, inc.history_seed)
    update_data = history.apply(old) + list(new)
    start_from = {"base": None, "existing": existing}.get(inc.init_from)
    if inc.init_from not in ("base", "existing"):
        raise IncrementalConfigError(f"config.incremental.init_from={inc.init_from!r}: expected 'base' or 'existing'")
    print(f"[incremental] training the update model on {len(new)} new datasets + "
          f"{inc.history_ratio:.0%} history ({sum(len(d) for d in update_data)} examples)")
    costs["update"] = _train(_run_config(config, "update", start_from), os.path.join(workdir, "update"), update_data)

    start = time.time()
    merged = os.path.join(workdir, "merged")
    merge_record = merge(config, spec, [existing, costs["update"]["model"]], merged, workdir)
    weights = merge_record["weights"] or [0.5, 0.5]  # equal
    _export(merged, os.path.join(workdir, "export"))
    merge_cost = round(time.time() - start, 2)

    if inc.compare_full_retrain:
        print("[incremental] training the full retrain on old + new data, for comparison")
        costs["full_retrain"] = _train(_run_config(config, "full_retrain"), os.path.join(workdir, "full_retrain"),
                                       list(old) + list(new))

    results = None
    if inc.evaluate:
        models = {}
        if not config.model.random_init:
            models["base"] = resolve_model_path(config.model.path)
        models["existing"] = existing
        models["update"] = costs["update"]["model"]
        models["incremental"] = merged
        if "full_retrain" in costs:
            models["full_retrain"] = costs["full_retrain"]["model"]
        results = evaluate_dev(config, models, os.path.join(workdir, "eval"), inc.eval_tasks)
    _write_card(config, workdir, existing, costs, weights, results, list(old) + list(new), merge_cost)
    means = summarize(results) if results else {}
    summary = {"costs": costs, "merge": dict(merge_record, weights=weights, wall_time_s=merge_cost),
               "scores": results or {}, "means": means,
               "old_datasets": [d.name for d in old], "new_datasets": [d.name for d in new]}
    write_json(os.path.join(workdir, "summary.json"), summary)
    _write_markdown(workdir, summary)
    with open(os.path.join(workdir, "summary.md")) as f:
        print(f.read())
    return summary


def _write_card(config: ml_collections.ConfigDict, workdir: str, existing: str, costs: dict, weights: list,
                results: dict | None, datasets: Sequence[TrainDataset], merge_cost: float) -> None:
    """DIR/export's README.md and boom.json: the existing and update models, the merge, dev scores."""
    from boom_jax.boom.provenance import member_entry, merged_provenance, write_export_card
    from boom_jax.training.loop import resolve_model_path

    update = costs["update"]
    members = [member_entry({"name": "existing", **costs.get("existing", {})},
                            os.path.dirname(os.path.normpath(existing)) if "existing" in costs else None, workdir, results),
               member_entry({"name": "update", **update}, os.path.join(workdir, "update"), workdir, results)]
    members[0].setdefault("model", existing)
    history = os.path.join(workdir, HISTORY_FILE)
    if os.path.exists(history):  # the update model saw this historical subset plus the new datasets
        from boom_jax.training.provenance import file_sha256

        members[1].update(manifest=HISTORY_FILE, manifest_sha256=file_sha256(history))
    provenance = merged_provenance(
        config, "incremental", datasets, members, {"method": config.merge.method, "weights": weights},
        model_dir=resolve_model_path(config.model.path), results=results, label="incremental",
        wall_time_s=float(update.get("wall_time_s", 0.0)) + merge_cost)
    write_export_card(os.path.join(workdir, "export"), provenance)


def _write_markdown(workdir: str, summary: dict) -> None:
    def fmt(x):
        return "-" if x is None else f"{100 * x:.2f}"

    costs, means = summary["costs"], summary["means"]
    update_cost = costs["update"]
    lines = ["# Incremental update summary", "",
             f"Old datasets: {', '.join(summary['old_datasets'])}; new: {', '.join(summary['new_datasets'])}.",
             f"Merge: {summary['merge']['method']} with weights {summary['merge']['weights']} "
             "(existing, update).", "",
             "| model | training steps | examples | wall time (s) | in-domain | out-of-domain | all |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rows = [("base", None), ("existing", costs.get("existing")), ("update", update_cost),
            ("incremental", update_cost), ("full_retrain", costs.get("full_retrain"))]
    for label, cost in rows:
        if label not in means and cost is None:
            continue
        m = means.get(label, {})
        steps = cost["steps"] if cost else 0
        examples = cost["examples"] if cost else 0
        wall = cost["wall_time_s"] + (summary["merge"]["wall_time_s"] if label == "incremental" else 0) if cost else 0
        lines.append(f"| {label} | {steps} | {examples} | {wall:.1f} | {fmt(m.get('in_domain_mean'))} | "
                     f"{fmt(m.get('out_of_domain_mean'))} | {fmt(m.get('mean'))} |")
    lines += ["", "The incremental model's cost is the update model's training plus the merge; the existing",
              "model's cost was paid before the update."]
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

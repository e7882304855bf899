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

import os
from collections.abc import Sequence

import ml_collections

from boom_jax.boom.merge_config import merge_spec
from boom_jax.boom.provenance import member_entry, write_merged_card
from boom_jax.boom.workflow import ensure_trained, evaluate, merge_and_export, run_config, score_table, scored, write_summary
from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import SubsetManifest, combine_incremental
from boom_jax.errors import ConfigError
from boom_jax.evaluation.report import summarize
from boom_jax.training.provenance import file_sha256
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.workdir_lock import holds_workdir_lock

HISTORY_FILE = "history.json"
COST_RECORD = "cost.json"


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def split_old_new(config: ml_collections.ConfigDict,
                  datasets: Sequence[TrainDataset]) -> tuple[list[TrainDataset], list[TrainDataset]]:
    """The old and new datasets that config.incremental names (new ones must not overlap old ones)."""
    inc = config.incremental
    by_name = {d.name: d for d in datasets}
    new_names = _names(inc.new_datasets)
    if not new_names:
        raise ConfigError("config.incremental.new_datasets is empty: name the new datasets")
    old_names = _names(inc.old_datasets) or [n for n in by_name if n not in new_names]
    for key, names in (("old_datasets", old_names), ("new_datasets", new_names)):
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"config.incremental.{key}: unknown datasets {unknown}; available: {sorted(by_name)}")
    overlap = sorted(set(old_names) & set(new_names))
    if overlap:
        raise ConfigError(f"config.incremental: {overlap} are both old and new datasets")
    return [by_name[n] for n in old_names], [by_name[n] for n in new_names]


def load_or_sample_history(workdir: str, old: Sequence[TrainDataset], ratio: float, seed: int) -> SubsetManifest:
    """The historical subset: read from DIR/history.json when an earlier update saved it, else drawn."""
    path = os.path.join(workdir, HISTORY_FILE)
    if os.path.exists(path):
        return SubsetManifest.load(path)
    _, manifest = combine_incremental(old, [], ratio=ratio, seed=seed)
    manifest.save(path)
    return manifest


def _train(config: ml_collections.ConfigDict, workdir: str, name: str, datasets: Sequence[TrainDataset],
           detail: str, model_path: str | None = None) -> dict:
    """Trains (resumes, or skips when DIR/<name>/cost.json exists) one model; returns its cost record."""
    updates = {"export.sentence_transformers": False}
    if model_path is not None:
        updates["model.path"] = model_path
    return ensure_trained(run_config(config, name, updates), os.path.join(workdir, name), datasets,
                          record_file=COST_RECORD, tag="incremental", label=name, detail=detail)


@holds_workdir_lock  # one run of this workflow per workdir
def run_incremental(config: ml_collections.ConfigDict, workdir: str,
                    datasets: Sequence[TrainDataset] | None = None) -> dict:
    """Runs the whole update (existing model, update model, merge, optional full retrain, evaluation)."""
    inc = config.incremental
    spec = merge_spec(config, 2)  # (existing, update), checked before any training
    if inc.init_from not in ("base", "existing"):
        raise ConfigError(f"config.incremental.init_from={inc.init_from!r}: expected 'base' or 'existing'")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if datasets is None:
        datasets = load_train_datasets(config)
    old, new = split_old_new(config, datasets)
    costs: dict[str, dict] = {}
    existing = inc.existing
    if not existing:
        costs["existing"] = _train(config, workdir, "existing", old, " (no existing model given) on the old datasets")
        existing = costs["existing"]["model"]

    history = load_or_sample_history(workdir, old, inc.history_ratio, inc.history_seed)
    update_data = history.apply(old) + list(new)
    costs["update"] = _train(config, workdir, "update", update_data,
                             f" on {len(new)} new datasets + {inc.history_ratio:.0%} history "
                             f"({sum(len(d) for d in update_data)} examples)",
                             model_path=existing if inc.init_from == "existing" else None)
    merged = os.path.join(workdir, "merged")
    merge = merge_and_export(config, spec, {"existing": existing, "update": costs["update"]["model"]}, merged,
                             workdir, tag="incremental", export=os.path.join(workdir, "export"))
    merge["weights"] = merge["weights"] or [0.5, 0.5]  # equal
    if inc.compare_full_retrain:
        costs["full_retrain"] = _train(config, workdir, "full_retrain", list(old) + list(new),
                                       " on old + new data, for comparison")

    results = None
    if inc.evaluate:
        models = {"existing": existing, "update": costs["update"]["model"], "incremental": merged}
        if "full_retrain" in costs:
            models["full_retrain"] = costs["full_retrain"]["model"]
        results = evaluate(config, models, os.path.join(workdir, "eval"), inc.eval_tasks)
    _write_card(config, workdir, existing, costs, merge, results, list(old) + list(new))
    means = summarize(results) if results else {}
    summary = {"costs": costs, "merge": merge, "scores": results or {}, "means": means,
               "old_datasets": [d.name for d in old], "new_datasets": [d.name for d in new]}
    rows = [("base", None), ("existing", costs.get("existing")), ("update", costs["update"]),
            ("incremental", costs["update"]), ("full_retrain", costs.get("full_retrain"))]
    table = scored([{"model": label, "steps": cost["steps"] if cost else 0, "examples": cost["examples"] if cost else 0,
                     "wall_time_s": (cost["wall_time_s"] + (merge["wall_time_s"] if label == "incremental" else 0)
                                     if cost else 0)}
                    for label, cost in rows if label in means or cost is not None], results)
    write_summary(workdir, "incremental", [
        "# Incremental update summary", "",
        f"Old datasets: {', '.join(summary['old_datasets'])}; new: {', '.join(summary['new_datasets'])}.",
        f"Merge: {merge['method']} with weights {merge['weights']} (existing, update).", "",
        *score_table(table, "training steps"), "",
        "The incremental model's cost is the update model's training plus the merge; the existing",
        "model's cost was paid before the update."], summary)
    return summary


def _write_card(config: ml_collections.ConfigDict, workdir: str, existing: str, costs: dict, merge: dict,
                results: dict | None, datasets: Sequence[TrainDataset]) -> None:
    """DIR/export's README.md and boom.json: the existing and update models, the merge, dev scores."""
    update = costs["update"]
    members = [member_entry({"name": "existing", **costs.get("existing", {})},
                            os.path.dirname(os.path.normpath(existing)) if "existing" in costs else None, workdir, results),
               member_entry({"name": "update", **update}, os.path.join(workdir, "update"), workdir, results)]
    members[0].setdefault("model", existing)
    history = os.path.join(workdir, HISTORY_FILE)
    if os.path.exists(history):  # the update model saw this historical subset plus the new datasets
        members[1].update(manifest=HISTORY_FILE, manifest_sha256=file_sha256(history))
    write_merged_card(config, "incremental", workdir, datasets, members,
                      {"method": config.merge.method, "weights": merge["weights"]}, results=results,
                      wall_time_s=float(update.get("wall_time_s", 0.0)) + merge["wall_time_s"], label="incremental")

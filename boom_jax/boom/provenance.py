"""Provenance of the models the BOOM workflows merge (bag, incremental update, cluster merge).

`merged_provenance(...)` extends a run's training facts (boom_jax.training.provenance) with the merge:
method, parameters, weights, base, and each member with its ratio, seed, the sha256 of its subset
manifest, its cost and its dev score beside the merged one. `write_export_card(export_dir, provenance)`
rewrites the export's README.md and boom.json in place (each file atomically), so the card can carry
dev scores measured after the export was written.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ml_collections

from boom_jax.data.records import TrainDataset
from boom_jax.hf.loader import config_from_folder
from boom_jax.hf.model_card import write_card_files
from boom_jax.merging.recipe import RECIPE_FILE
from boom_jax.training.model_setup import resolve_model_path
from boom_jax.training.provenance import SUBSET_MANIFEST, file_sha256, training_provenance


def dev_section(results: Mapping[str, Mapping[str, Mapping]] | None, label: str) -> dict[str, Any] | None:
    """The provenance "evaluation" section of one model of an evaluation's results."""
    scores = (results or {}).get(label)
    if not scores:
        return None
    return {"dev": {t: float(e["main_score"]) for t, e in scores.items()},
            "task_types": {t: e.get("type", "retrieval") for t, e in scores.items()},
            "metrics": {t: e.get("metric", "ndcg_at_10") for t, e in scores.items()}}


def member_entry(record: Mapping[str, Any], member_dir: str | None, root: str,
                 results: Mapping[str, Mapping] | None = None) -> dict[str, Any]:
    """One merged model: name, ratio, seed, steps, examples, wall time, manifest hash, export, dev score."""
    name = record.get("name")
    entry = {k: record.get(k) for k in ("name", "ratio", "seed", "steps", "examples", "wall_time_s") if k in record}
    if record.get("model"):
        entry["model"] = os.path.relpath(record["model"], root) if os.path.isabs(record["model"]) else record["model"]
    if member_dir:
        manifest = os.path.join(member_dir, SUBSET_MANIFEST)
        if os.path.exists(manifest):
            entry["manifest"] = os.path.relpath(manifest, root)
            entry["manifest_sha256"] = file_sha256(manifest)
        export = os.path.join(member_dir, "export")
        if os.path.isdir(export):
            entry["export"] = os.path.relpath(export, root)
    dev = dev_section(results, name)
    if dev:
        entry["dev_scores"] = dev["dev"]
        entry["dev_score"] = sum(dev["dev"].values()) / len(dev["dev"])
    return entry


def merged_provenance(config: ml_collections.ConfigDict, kind: str, datasets: Sequence[TrainDataset],
                      members: Sequence[Mapping[str, Any]], merge: Mapping[str, Any], *, model_dir: str | None,
                      results: Mapping[str, Mapping] | None = None, label: str = "merged",
                      wall_time_s: float = 0.0) -> dict[str, Any]:
    """Provenance of a merged model (kind "merged" | "incremental" | "cluster").

    `members`: `member_entry` dicts; `merge`: {"method", "params", "weights", "base"}; the training
    section is the shared recipe over `datasets`, with steps and examples summed over the members."""
    steps = sum(int(m.get("steps") or 0) for m in members)
    out = training_provenance(config, datasets, steps=steps, wall_time_s=wall_time_s, model_dir=model_dir)
    out["kind"] = kind
    out["training"]["examples"] = sum(int(m.get("examples") or 0) for m in members)
    out["training"]["subset"] = None
    out["merge"] = {"method": merge.get("method"), "params": dict(merge.get("params") or {}),
                    "weights": list(merge.get("weights") or []) or None, "base": merge.get("base") or None,
                    "members": list(members)}
    dev = dev_section(results, label)
    if dev:
        out["evaluation"] = dev
    return out


def write_merged_card(config: ml_collections.ConfigDict, kind: str, workdir: str, datasets: Sequence[TrainDataset],
                      members: Sequence[Mapping[str, Any]], merge: Mapping[str, Any], *,
                      results: Mapping[str, Mapping] | None, wall_time_s: float, label: str = "merged") -> None:
    """The card of a workflow's merged model, DIR/export: `merged_provenance` over the training base
    (config.model.path), written by `write_export_card`."""
    provenance = merged_provenance(config, kind, datasets, members, merge, results=results, label=label,
                                   model_dir=resolve_model_path(config.model.path), wall_time_s=wall_time_s)
    write_export_card(os.path.join(workdir, "export"), provenance)


def write_export_card(export_dir: str, provenance: Mapping[str, Any], merged_dir: str | None = None) -> None:
    """README.md + boom.json of an existing export folder, from `provenance`. The merge's own recipe
    (`merged_dir`/recipe.yml, default the sibling DIR/merged) goes into the card as the YAML block that
    reproduces the merge (`python -m boom_jax.merge --recipe=...`, mergekit's format)."""
    provenance = dict(provenance)
    recipe = os.path.join(merged_dir or os.path.join(os.path.dirname(os.path.abspath(export_dir)), "merged"),
                          RECIPE_FILE)
    if provenance.get("merge") and os.path.isfile(recipe):
        with open(recipe, encoding="utf-8") as f:
            provenance["merge"] = {**provenance["merge"], "recipe": f.read(),
                                   "recipe_file": os.path.relpath(recipe, os.path.dirname(os.path.abspath(export_dir)))}
    cfg = config_from_folder(export_dir)[0]
    write_card_files(export_dir, cfg, provenance)

"""The training facts of a run, as the provenance dict the export renders (boom_jax.hf.model_card).

`training_provenance(...)` describes one run: the data it trained on (per-dataset example counts, the
subset manifest's sha256 for a bag member), schedule, batch, lengths, learning rate, temperature,
steps, examples, wall time and hardware; `base_model_id(config)` names the model it started from
(a hub id where one is known). The BOOM workflows add their merge section on top.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from boom_jax.data.records import TrainDataset
from boom_jax.hf.model_card import PROVENANCE_FORMAT, read_card_metadata, read_provenance
from boom_jax.model_io import resolve_model_folder

# Hub ids of the built-in models (config.model.path "builtin:NAME").
BUILTIN_HUB_IDS = {"builtin:minilm": "sentence-transformers/all-MiniLM-L6-v2"}
SUBSET_MANIFEST = "subset_manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (what `sha256sum` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_model_id(config: ml_collections.ConfigDict, model_dir: str | None = None) -> str:
    """config.export.base_model, else the hub id of config.model.path (built-in, a hub-style name, or
    what the folder's own boom.json / card names), else the path as given."""
    given = config.export.get("base_model", "") if "export" in config else ""
    if given:
        return given
    path = config.model.path
    if path in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[path]
    if model_dir and os.path.isdir(model_dir):
        own = read_provenance(model_dir) or {}
        if own.get("repo_id"):
            return own["repo_id"]
    return path


def find_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """boom.json of a model path: the folder's own, else its train / bag workdir's (WORKDIR/model ->
    WORKDIR/boom.json); None when there is none."""
    path = os.fspath(path)
    candidates = [path]
    try:
        folder = resolve_model_folder(path)
    except ValueError:  # not a model folder: only the path's own boom.json counts
        folder = None
    if folder:
        candidates += [folder, os.path.dirname(os.path.normpath(folder))]
    for candidate in candidates:
        found = read_provenance(candidate) if os.path.isdir(candidate) else None
        if found:
            return found
    return None


def hardware() -> dict[str, Any]:
    """The devices this process trains on."""
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count()}


def card_defaults(config: ml_collections.ConfigDict, model_dir: str | None) -> dict[str, Any]:
    """name, repo_id, license and language: config.export's, else the base model card's."""
    export = config.get("export", ml_collections.ConfigDict())
    base_card = read_card_metadata(model_dir)
    language = export.get("language", "") or base_card.get("language") or "en"
    return {
        "name": export.get("model_name", "") or config.name,
        "repo_id": export.get("repo_id", "") or None,
        "license": export.get("license", "") or base_card.get("license"),
        "language": [s.strip() for s in language.split(",")] if isinstance(language, str) else list(language),
    }


def training_provenance(config: ml_collections.ConfigDict, datasets: Sequence[TrainDataset], *, steps: int,
                        wall_time_s: float, workdir: str | None = None, model_dir: str | None = None,
                        dev_scores: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The provenance dict of one training run (kind "trained")."""
    data, train = config.data, config.train
    subset = None
    manifest = os.path.join(workdir, SUBSET_MANIFEST) if workdir else None
    if manifest and os.path.exists(manifest):
        subset = {"ratio": float(data.subset_ratio), "seed": int(data.subset_seed), "manifest": SUBSET_MANIFEST,
                  "manifest_sha256": file_sha256(manifest)}
    specs = data.datasets.to_dict() if data.source == "files" else {}
    rows = []
    for d in datasets:
        row = {"name": d.name, "task_type": d.task_type, "examples": len(d.examples)}
        spec = specs.get(d.name) or {}
        hub = str(spec.get("path", "")) if isinstance(spec, dict) else ""
        if hub.startswith("hf:"):
            row["hub_id"] = "/".join(hub[3:].split("/")[:2])
        rows.append(row)
    training = {
        "datasets": rows, "source": data.source, "schedule": data.schedule, "batch_size": int(train.batch_size),
        "group_size": int(data.train_group_size), "query_max_len": int(data.query_max_len),
        "passage_max_len": int(data.passage_max_len), "learning_rate": float(train.learning_rate),
        "lr_schedule": train.lr_schedule, "warmup_ratio": float(train.warmup_ratio),
        "weight_decay": float(train.weight_decay), "temperature": float(train.temperature),
        "epochs": int(train.epochs), "steps": int(steps), "examples": int(steps) * int(train.batch_size),
        "seed": int(config.seed), "wall_time_s": round(float(wall_time_s), 2), "hardware": hardware(),
        "query_prompt_template": config.model.query_prompt_template, "subset": subset,
        "loss": config.loss.to_dict() if "loss" in config else {},
    }
    base = base_model_id(config, model_dir)
    if config.model.random_init and not config.export.get("base_model", ""):
        # trained from a random init: the architecture and tokenizer came from `base`, not its weights
        training["random_init_from"], base = base, None
    out = {"format": PROVENANCE_FORMAT, "kind": "trained", "base_model": base,
           **card_defaults(config, model_dir), "training": training}
    if dev_scores:
        out["evaluation"] = {"dev": {k: float(v) for k, v in dev_scores.items()},
                             "task_types": dict.fromkeys(dev_scores, "retrieval")}
    return out

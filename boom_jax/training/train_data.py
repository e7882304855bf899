"""A run's training data from its config: datasets loaded, checked, cut to a member's subset, prompts
applied, and the Batcher's schedule and packing options.

`prepare_datasets(config, workdir, datasets, subset, report)` is what every run (plain, stacked
member, dry run aside) trains on; `apply_passage_prompts(sets, document_prompt(cfg))` then puts the
model's document prompt on passages (the evaluation does the same).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import SubsetManifest, sample_subsets
from boom_jax.data.schedules import schedule_arguments
from boom_jax.data.sources import load_datasets
from boom_jax.data.validation import LoadReport
from boom_jax.errors import ConfigError
from boom_jax.training.data_checks import check_subset_sizes, check_train_datasets

DOCUMENT_PROMPT_NAMES = ("document", "passage")  # sentence-transformers' prompt names for the document side


def query_prompt(template: str, instruction: str) -> str:
    """The text put before a query: the template filled with the instruction; "" without a template."""
    return template.format(instruction=instruction) if template and instruction else ""


def apply_query_template(datasets: Sequence[TrainDataset], template: str) -> list[TrainDataset]:
    """Each example's prompt (its instruction) rewritten through the template; no template = none."""
    out = []
    for d in datasets:
        examples = [dataclasses.replace(e, prompt=query_prompt(template, e.prompt)) for e in d.examples]
        out.append(dataclasses.replace(d, examples=examples))
    return out


def document_prompt(cfg) -> str:
    """The model's own document prompt (its "document", else "passage" prompt), as evaluation puts it
    on documents; "" when it has none."""
    prompts = getattr(cfg, "prompts", None) or {}
    return next((prompts[n] for n in DOCUMENT_PROMPT_NAMES if prompts.get(n)), "")


def apply_passage_prompts(datasets: Sequence[TrainDataset], default: str = "") -> list[TrainDataset]:
    """Every positive and negative prefixed with its dataset's passage_prompt, else `default` (the
    model's document prompt), so training sees passages as evaluation does; "" leaves them as they are."""
    out = []
    for d in datasets:
        prompt = d.passage_prompt or default
        if prompt:
            d = dataclasses.replace(d, examples=[dataclasses.replace(
                e, pos=[prompt + t for t in e.pos], neg=[prompt + t for t in e.neg]) for e in d.examples])
        out.append(d)
    return out


def load_train_datasets(config: ml_collections.ConfigDict, report: LoadReport | None = None) -> list[TrainDataset]:
    """The datasets named by config.data (the built-in corpus or files / HF datasets). `report` receives
    what config.data.on_error="skip" (or a dataset's own on_error) dropped, by reason, and the duplicates."""
    limit = config.data.limit or None
    if config.data.source == "builtin":
        names = [n.strip() for n in config.data.names.split(",") if n.strip()] or None
        try:
            return builtin_train_datasets(names=names, limit=limit)
        except KeyError as e:
            raise ConfigError(f"config.data.names={config.data.names!r}: {e.args[0]}") from None
    specs = {}
    for name, spec in config.data.datasets.items():
        spec = dict(spec)
        if not spec.get("limit"):
            spec["limit"] = limit
        specs[name] = spec
    report = LoadReport() if report is None else report
    datasets = load_datasets(specs, on_error=config.data.on_error, report=report)
    if (report.num_skipped or report.duplicate_pairs) and jax.process_index() == 0:
        logging.warning("training data: %s", report.summary().replace("\n", "\n  "))
    return datasets


def prepare_datasets(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset] | None,
                     subset: Any, report: LoadReport | None = None) -> list[TrainDataset]:
    """Loaded (or given) datasets, checked (boom_jax.training.data_checks), restricted to the member's
    subset (saved as WORKDIR/subset_manifest.json), with query prompts applied. `report` receives the
    loading counts when the data is loaded here."""
    if datasets is None:
        datasets = load_train_datasets(config, report)
    check_train_datasets(config, datasets, report)
    if subset is None and config.data.subset_ratio < 1.0:
        subset = sample_subsets(datasets, config.data.subset_ratio, config.data.subset_seed)
    if subset is not None:
        if not isinstance(subset, SubsetManifest):
            raise TypeError(f"subset must be a SubsetManifest, got {type(subset).__name__}")
        if jax.process_index() == 0:
            subset.save(os.path.join(workdir, "subset_manifest.json"))
        datasets = subset.apply(datasets)
        check_subset_sizes(config, datasets)
    return apply_query_template(datasets, config.model.query_prompt_template)


def packing_options(config: ml_collections.ConfigDict, host_batch_shards: int) -> dict[str, Any]:
    """The Batcher's packing arguments from config.data (packing, pack_length, pack_segments,
    pack_row_buckets, pack_adaptive): rows laid out for this host's batch shards, row counts a multiple of the
    gradient cache's chunk count, row widths adaptive up to pack_length."""
    if not config.data.packing:
        return {}
    chunks = config.train.batch_size // config.train.grad_cache_chunk if config.train.grad_cache_chunk else 1
    return {"packing": True, "pack_length": config.data.pack_length or None,
            "pack_segments": config.data.pack_segments or None, "pack_shards": host_batch_shards,
            "pack_row_multiple": chunks, "pack_row_buckets": config.data.pack_row_buckets,
            "pack_adaptive": config.data.pack_adaptive}


def schedule_options(config: ml_collections.ConfigDict, train_sets: Sequence[TrainDataset]) -> dict[str, Any]:
    """The batch schedule's keyword arguments from config.data.schedule_options (e.g. two_stage's
    first_stage -> its stages), checked against the datasets here, so a bad entry is an error naming the
    key before any work."""
    return schedule_arguments(config.data.schedule, config.data.schedule_options, train_sets)

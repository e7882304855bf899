"""Checks of the loaded training data before the first step: what would otherwise surface mid-run,
or never (a dataset too small for one batch contributes no batch at all, silently).

`check_train_datasets(config, datasets, report)` refuses (ConfigError naming the dataset, where it came
from and the counts) an empty dataset, a dataset smaller than one full batch under a one-dataset-per-
batch schedule, and an unknown task type; it warns, with counts, when examples hold fewer hard
negatives than a group takes (the batcher then repeats them or draws random negatives).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from boom_jax.data.records import TrainDataset
from boom_jax.data.validation import LoadReport
from boom_jax.errors import ConfigError

# Task types the project knows (schedules group by them; classification / clustering turn off in-batch
# negatives). Anything else is most likely a typo that would silently get retrieval behaviour.
TRAIN_TASK_TYPES = ("retrieval", "classification", "clustering", "sts", "pair_classification", "reranking",
                    "bitext_mining", "summarization")
MIXED_BATCH_SCHEDULES = ("instance_mixing",)  # batches mix datasets: no per-dataset minimum


def _warn(message: str, *args) -> None:
    """A warning about the run's data, once (process 0): every host loads the same data."""
    if jax.process_index() == 0:
        logging.warning(message, *args)


def dataset_origin(config: ml_collections.ConfigDict, name: str) -> str:
    """Where a dataset came from, for messages: its config key and path, or its built-in file."""
    if config.data.source == "builtin":
        return f"built-in boom_jax/data/builtin/train/{name}.jsonl.gz"
    spec = config.data.datasets.get(name) if hasattr(config.data.datasets, "get") else None
    if spec is not None:
        path = spec.get("path", spec.get("source", "?"))
        return f"config.data.datasets.{name}, {path}"
    paths = [s.get("path", s.get("source", "?")) for s in config.data.datasets.values()]
    return f"a file of config.data.datasets ({', '.join(map(str, paths))})"


def _counts(report: LoadReport | None) -> str:
    if report is None:
        return ""
    return (f"; loading kept {report.loaded} examples in all, skipped {report.num_skipped} bad records, "
            f"dropped {report.duplicate_pairs} duplicate pairs")


def check_train_datasets(config: ml_collections.ConfigDict, datasets: Sequence[TrainDataset],
                         report: LoadReport | None = None) -> None:
    """Refuse data that cannot train as configured; warn about missing hard negatives (see module doc)."""
    batch = int(config.train.batch_size)
    limit = f" (config.data.limit={config.data.limit})" if config.data.limit else ""
    if not datasets:
        raise ConfigError("config.data: no training dataset was loaded; check config.data.source, "
                          "config.data.names and config.data.datasets")
    for d in datasets:
        if d.task_type not in TRAIN_TASK_TYPES:
            raise ConfigError(f"dataset {d.name!r} ({dataset_origin(config, d.name)}): unknown task type "
                              f"{d.task_type!r}; expected one of {TRAIN_TASK_TYPES} (set task_type in "
                              f"config.data.datasets.{d.name} or the records' \"type\")")
        if not d.examples:
            raise ConfigError(f"dataset {d.name!r} ({dataset_origin(config, d.name)}): 0 examples after "
                              f"validation, duplicate removal and limit{limit}{_counts(report)}")
        if config.data.schedule not in MIXED_BATCH_SCHEDULES and len(d.examples) < batch:
            raise ConfigError(
                f"dataset {d.name!r} ({dataset_origin(config, d.name)}): {len(d.examples)} examples after "
                f"duplicate removal and limit{limit}, fewer than one batch (config.train.batch_size={batch}); "
                f"each batch holds one dataset, so it would never be trained on. Add examples, lower "
                f"config.train.batch_size, drop the dataset, or use config.data.schedule='instance_mixing'")
    default_group = int(config.data.train_group_size)
    for d in datasets:
        wanted = (default_group if d.hard_negatives is None else 1 + d.hard_negatives) - 1
        if wanted <= 0:
            continue
        short = [len(e.neg) for e in d.examples if len(e.neg) < wanted]
        if short:
            key = (f"config.data.datasets.{d.name}.hard_negatives={d.hard_negatives}" if d.hard_negatives is not None
                   else f"config.data.train_group_size={default_group}")
            _warn("dataset %r: %d of %d examples have fewer than the %d hard negatives a group takes (%s; "
                        "fewest: %d); their groups repeat their negatives or use random negatives from other "
                        "examples", d.name, len(short), len(d.examples), wanted, key, min(short))


def check_subset_sizes(config: ml_collections.ConfigDict, datasets: Sequence[TrainDataset]) -> None:
    """After a bag member's subset: refuse when no dataset fills one batch (nothing to train on); warn
    about the datasets left smaller than a batch (they contribute no batch to this member)."""
    if config.data.schedule in MIXED_BATCH_SCHEDULES:
        return
    batch = int(config.train.batch_size)
    small = [f"{d.name} ({len(d.examples)})" for d in datasets if len(d.examples) < batch]
    if small and len(small) == len(datasets):
        raise ConfigError(f"config.data.subset_ratio={config.data.subset_ratio}: every dataset of the subset is "
                          f"smaller than one batch (config.train.batch_size={batch}): {', '.join(small)}")
    if small:
        _warn("subset ratio %s leaves %s smaller than one batch of %d: no batch from them in this run",
                    config.data.subset_ratio, ", ".join(small), batch)

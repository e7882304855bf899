"""Held-out dev slices and the eval-mode InfoNCE loss the workflows score models by.

`dev_split` holds the last examples of a seeded shuffle of each dataset out of training (the cluster
workflow's dev slices, the learned merge weights' held-out examples); `dev_loss` is a model's loss
on such slices in the training batch layout, the same batches for every model, so losses compare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from boom_jax.data.batcher import Batcher
from boom_jax.data.records import TrainDataset
from boom_jax.data.sampling import SubsetManifest, dataset_rng
from boom_jax.errors import ConfigError
from boom_jax.model_io import load_model, tokenizer_dir_of
from boom_jax.models.encoder import jitted_forward
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from boom_jax.training.loss import info_nce
from boom_jax.training.run_setup import text_lengths
from boom_jax.training.train_data import apply_query_template


@dataclasses.dataclass(frozen=True)
class DevSplit:
    """Per dataset: the training indices (sorted) and the held-out dev indices (sorted)."""

    seed: int
    train: dict[str, list[int]]
    dev: dict[str, list[int]]
    sizes: dict[str, int]

    def train_manifest(self, names: Sequence[str]) -> SubsetManifest:
        """The subset manifest that restricts `names` to their training indices (for training.loop.train)."""
        indices = {n: list(self.train[n]) for n in names}
        total = sum(self.sizes[n] for n in names)
        return SubsetManifest(ratio=sum(len(v) for v in indices.values()) / max(total, 1), seed=self.seed,
                              mode="without_replacement", indices=indices, sizes={n: self.sizes[n] for n in names})

    def dev_datasets(self, datasets: Sequence[TrainDataset]) -> list[TrainDataset]:
        """Each dataset restricted to its dev slice."""
        return [dataclasses.replace(d, examples=[d.examples[i] for i in self.dev[d.name]]) for d in datasets]


def dev_split(datasets: Sequence[TrainDataset], dev_examples: int, seed: int, min_train: int = 1) -> DevSplit:
    """The last `dev_examples` examples of a seeded shuffle of each dataset are held out; the rest trains.

    Raises ConfigError (naming config.cluster.dev_examples) when a dataset keeps fewer than `min_train`
    training examples.
    """
    if dev_examples < 1:
        raise ConfigError(f"config.cluster.dev_examples={dev_examples} must be >= 1")
    train, dev, sizes = {}, {}, {}
    for d in datasets:
        n = len(d.examples)
        if n - dev_examples < min_train:
            raise ConfigError(
                f"dataset {d.name!r} has {n} examples: holding out config.cluster.dev_examples={dev_examples} "
                f"leaves fewer than {min_train} to train on (one batch); lower dev_examples or raise data.limit")
        order = dataset_rng(seed, "cluster_dev", d.name).permutation(n)
        train[d.name] = sorted(int(i) for i in order[:n - dev_examples])
        dev[d.name] = sorted(int(i) for i in order[n - dev_examples:])
        sizes[d.name] = n
    return DevSplit(seed=int(seed), train=train, dev=dev, sizes=sizes)


def dev_loss(config: ml_collections.ConfigDict, cfg: Any, params: Any, tokenizer_dir: str,
             dev_sets: Sequence[TrainDataset], batch_size: int) -> dict[str, float]:
    """Eval-mode (no dropout) InfoNCE loss of a model on each dev set: {dataset: mean loss}.

    Batches are the training layout (Batcher, schedule "bls": one dataset per batch, [query, pos,
    negs] groups of config.data.train_group_size, each dataset's in_batch_negatives), drawn with a
    fixed seed so every model sees the same batches; padded to the run's max lengths (one shape per set).
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    query_tok, passage_tok = (TextTokenizer(tokenizer, n, cfg.padding_side, cfg.append_eos, buckets=(n,))
                              for n in text_lengths(config, cfg))
    forward = jitted_forward(cfg)
    params = jax.device_put(params, jax.devices()[0])
    out = {}
    for d in apply_query_template(dev_sets, config.model.query_prompt_template):
        batcher = Batcher([d], query_tok, passage_tok, batch_size, group_size=config.data.train_group_size,
                          schedule="bls", seed=config.seed, num_epochs=1, token_cache_size=0, show_progress=False)
        losses = []
        for batch in batcher:
            q = forward(params, batch["query_ids"], batch["query_mask"])
            p = forward(params, batch["passage_ids"], batch["passage_mask"])
            losses.append(float(info_nce(q, p, config.train.temperature, bool(batch["in_batch_negatives"]))))
        out[d.name] = float(np.mean(losses))
    return out


def model_dev_loss(config: ml_collections.ConfigDict, model_path: str, dev_sets: Sequence[TrainDataset],
                   batch_size: int) -> dict[str, float]:
    """dev_loss of a saved model (model folder, train workdir or HF folder)."""
    cfg, params, tokenizer_dir = load_model(model_path)
    return dev_loss(config, cfg, params, tokenizer_dir or tokenizer_dir_of(model_path) or model_path,
                    dev_sets, batch_size)

"""Merge weights learned from held-out data: LM-Cocktail and a greedy soup.

- `cocktail`: LM-Cocktail (Xiao et al. 2023) weights each member by softmax(-loss_i / T), loss_i its
  mean InfoNCE loss on a few held-out examples of every dataset (T = config.merge.temperature).
- `greedy`: a greedy soup (Wortsman et al. 2022): members sorted by held-out loss, the best first; the
  next joins only if the soup merged with it (config.merge.method, equal weights over the chosen) has
  a lower held-out loss. Members left out get weight 0.

The held-out examples are the last config.merge.heldout_examples of a seeded shuffle of each dataset,
removed from training (`heldout_split`), so no member has seen them. The losses are the cluster
workflow's dev losses (eval mode, the training batch layout, the same batches for every model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from boom_jax import model_io
from boom_jax.boom.heldout import dev_loss, dev_split
from boom_jax.boom.merge_config import MergeSpec, base_model_path
from boom_jax.data.records import TrainDataset
from boom_jax.errors import ConfigError
from boom_jax.merging.methods import merge_trees


def cocktail_weights(losses: Sequence[float], temperature: float) -> list[float]:
    """softmax(-loss / temperature): lower held-out loss, larger weight (LM-Cocktail)."""
    x = -np.asarray(losses, np.float64) / float(temperature)
    e = np.exp(x - x.max())
    return [float(v) for v in e / e.sum()]


def greedy_soup(losses: Sequence[float], soup_loss: Any) -> tuple[list[float], list[dict]]:
    """Greedy soup over members ranked by `losses`; `soup_loss(indices)` scores a soup of them.

    Returns (weights: 1/n for the n chosen members, 0 for the others; the trace of every try).
    """
    order = [int(i) for i in np.argsort(np.asarray(losses, np.float64), kind="stable")]
    chosen, best = [order[0]], float(losses[order[0]])
    trace = [{"members": list(chosen), "loss": best, "kept": True}]
    for i in order[1:]:
        loss = float(soup_loss(chosen + [i]))
        kept = loss < best
        trace.append({"members": chosen + [i], "loss": loss, "kept": kept})
        if kept:
            chosen.append(i)
            best = loss
    weights = [1.0 / len(chosen) if i in chosen else 0.0 for i in range(len(losses))]
    return weights, trace


def heldout_split(datasets: Sequence[TrainDataset], examples: int, seed: int,
                  min_train: int) -> tuple[list[TrainDataset], list[TrainDataset]]:
    """(training datasets without the held-out examples, the held-out examples of each dataset)."""
    try:
        split = dev_split(datasets, examples, seed, min_train=min_train)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.cluster.dev_examples", "config.merge.heldout_examples")) from None
    train = [dataclasses.replace(d, examples=[d.examples[i] for i in split.train[d.name]]) for d in datasets]
    return train, split.dev_datasets(datasets)


def _mean_loss(per_dataset: dict[str, float]) -> float:
    return float(np.mean(list(per_dataset.values())))


def learn_weights(config: ml_collections.ConfigDict, spec: MergeSpec, models: Sequence[str],
                  heldout: Sequence[TrainDataset], workdir: str) -> dict[str, Any]:
    """The learned weights of `models` (spec.auto: "cocktail" | "greedy") with what they came from:
    {"mode", "weights", "losses" (per member, mean over datasets), "per_dataset", "trace" (greedy)}."""
    batch = min(int(config.train.batch_size), spec.heldout_examples)
    loaded = [model_io.load_model(p) for p in models]
    cfg, _, tokenizer_dir = loaded[0]
    tokenizer_dir = tokenizer_dir or model_io.tokenizer_dir_of(models[0]) or models[0]
    per_dataset = [dev_loss(config, c, params, tokenizer_dir, heldout, batch) for c, params, _ in loaded]
    losses = [_mean_loss(d) for d in per_dataset]
    record: dict[str, Any] = {"mode": spec.auto, "losses": losses, "per_dataset": per_dataset,
                              "heldout_examples": spec.heldout_examples}
    if spec.auto == "cocktail":
        record.update(weights=cocktail_weights(losses, spec.temperature), temperature=spec.temperature)
        return record
    base_path = base_model_path(config, spec, workdir)
    base = None if base_path is None else model_io.load_model(base_path)[1]
    trees = [params for _, params, _ in loaded]

    def soup_loss(indices: list[int]) -> float:
        weights = [1.0 / len(indices) if i in indices else 0.0 for i in range(len(trees))]
        merged = merge_trees(spec.method, trees, weights=weights, base=base, **spec.params)
        return _mean_loss(dev_loss(config, cfg, merged, tokenizer_dir, heldout, batch))

    weights, trace = greedy_soup(losses, soup_loss)
    record.update(weights=weights, trace=trace)
    return record

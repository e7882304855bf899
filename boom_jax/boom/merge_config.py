"""The `merge` section every workflow merges with (bag, incremental update, clusters, experiments).

    config.merge.method            a boom_jax.merging method; names mean what mergekit's mean
    config.merge.weights           "" (equal) | "0.2,0.8" (one per model) | bag only: "auto:cocktail",
                                   "auto:greedy" (learned on held-out examples, boom/merge_weights.py)
    config.merge.params            the method's parameters, e.g. {"density": 0.5, "lambda_": 1.0}
    config.merge.base              task-vector origin: "" none, "base" the training base model, or a path
    config.merge.heldout_examples  auto weights: examples per dataset held out of training
    config.merge.temperature       auto:cocktail: T of softmax(-loss / T)

`merge_spec(config, num_models)` checks all of it before any training (ConfigError naming the key);
`merge(...)` runs the merge into a model folder (which gets its recipe.yml) and returns the record.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from boom_jax import model_io
from boom_jax.errors import ConfigError
from boom_jax.merging import methods
from boom_jax.merging.streaming import merge_models
from boom_jax.training.model_setup import load_model_for_training, resolve_model_path

AUTO_WEIGHTS = ("auto:cocktail", "auto:greedy")
BASE_MODEL = "base"
BASE_FOLDER = "base_model"  # WORKDIR/base_model: the training base saved when it is not on disk


@dataclasses.dataclass(frozen=True)
class MergeSpec:
    """config.merge, checked."""

    method: str
    weights: list[float] | None  # None = equal (or learned)
    auto: str | None  # "cocktail" | "greedy" | None
    params: dict[str, Any]
    base: str  # "" | "base" | a path
    heldout_examples: int
    temperature: float

    def record(self) -> dict[str, Any]:
        return {"method": self.method, "weights": self.weights, "auto": self.auto, "params": self.params,
                "base": self.base}


def _plain(value: Any) -> Any:
    if isinstance(value, (ml_collections.ConfigDict, dict)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def merge_spec(config: ml_collections.ConfigDict, num_models: int | None = None,
               allow_auto: bool = False) -> MergeSpec:
    """config.merge checked against `num_models` (when known); ConfigError names config.merge.<key>."""
    if "merge" not in config:
        raise ConfigError("config.merge is missing (start from configs/common.py:base_config())")
    m = config.merge
    if m.method not in methods.MERGE_METHODS:
        raise ConfigError(f"config.merge.method={m.method!r} is not a merge method; known: "
                          f"{', '.join(methods.MERGE_METHODS)}")
    method = methods.MERGE_METHODS[m.method]
    text = str(m.weights).strip()
    weights, auto = None, None
    if text in AUTO_WEIGHTS:
        if not allow_auto:
            raise ConfigError(f"config.merge.weights={text!r}: learned weights are only for the bag "
                              "(configs/bag.py); give numbers or '' (equal)")
        auto = text.split(":", 1)[1]
        if not method.takes_weights:
            raise ConfigError(f"config.merge.weights={text!r}: {m.method}: takes no weights (it computes its own)")
    elif text:
        try:
            weights = [float(w) for w in text.split(",")]
        except ValueError:
            raise ConfigError(f"config.merge.weights={text!r}: expected '' (equal), comma-separated numbers "
                              f"or one of {AUTO_WEIGHTS}") from None
        if num_models is not None and len(weights) != num_models:
            raise ConfigError(f"config.merge.weights={text!r} has {len(weights)} weights for {num_models} models")
    params = _plain(m.params)
    try:
        methods.check_settings(method, num_models or (len(weights) if weights else None), weights, **params)
    except methods.MergeError as e:
        raise ConfigError(f"config.merge: {e}") from None
    base = str(m.base)
    if method.needs_base and not base:
        raise ConfigError(f"config.merge.base is empty but config.merge.method={m.method!r} works on task "
                          f"vectors: set config.merge.base='{BASE_MODEL}' (the training base model) or a path")
    if base and base != BASE_MODEL and not os.path.exists(base):
        raise ConfigError(f"config.merge.base={base!r} is not a folder ('{BASE_MODEL}' = the training base model)")
    if auto and m.heldout_examples < 1:
        raise ConfigError(f"config.merge.heldout_examples={m.heldout_examples} must be >= 1 with learned weights")
    if not (m.temperature > 0 and math.isfinite(m.temperature)):
        raise ConfigError(f"config.merge.temperature={m.temperature} must be a finite number > 0")
    return MergeSpec(method=str(m.method), weights=weights, auto=auto, params=params, base=base,
                     heldout_examples=int(m.heldout_examples), temperature=float(m.temperature))


def base_model_path(config: ml_collections.ConfigDict, spec: MergeSpec, workdir: str) -> str | None:
    """The folder of the merge's base: a given path, the training base model ('base'; saved to
    WORKDIR/base_model when it exists only in memory: a random init or LoRA), or None."""
    if not spec.base:
        return None
    if spec.base != BASE_MODEL:
        return spec.base
    if not config.model.random_init and config.model.lora_rank == 0:
        return resolve_model_path(config.model.path)
    folder = os.path.join(workdir, BASE_FOLDER)
    if model_io.is_model_folder(folder):
        return folder
    cfg, params, tokenizer_dir = load_model_for_training(config, jax.random.PRNGKey(config.seed))
    return model_io.save_model_folder(folder, cfg, jax.device_get(params), tokenizer_dir, overwrite=True)


def merge(config: ml_collections.ConfigDict, spec: MergeSpec, inputs: Sequence[str], out: str, workdir: str,
          weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Merges `inputs` into the model folder `out` (with its recipe.yml) as config.merge says;
    `weights` (learned ones) replace spec.weights. Returns the merge record (method, weights, ...)."""
    chosen = list(weights) if weights is not None else spec.weights
    start = time.time()
    merge_models(list(inputs), out, spec.method, weights=chosen, base=base_model_path(config, spec, workdir),
                 streaming=True, export=False, overwrite=True, progress=config.log.progress_bar, **spec.params)
    record = spec.record()
    record.update(weights=chosen, wall_time_s=round(time.time() - start, 2))
    return record

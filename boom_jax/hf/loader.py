"""Loading a Hugging Face (optionally sentence-transformers) folder into ModelConfig + Flax params."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from boom_jax.hf.errors import HFFolderError, WeightMapError
from boom_jax.hf.st_folder import read_json, read_st_settings
from boom_jax.models.config import ModelConfig
from boom_jax.models.registry import ArchSpec, arch_for_model_type

Params = dict[str, Any]


def read_hf_config(folder: str) -> dict[str, Any]:
    """config.json of `folder`; a clear error when the folder or the file is missing."""
    if not os.path.isdir(folder):
        raise HFFolderError(f"model folder {folder!r} does not exist")
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise HFFolderError(f"{folder}: no config.json (not a Hugging Face model folder)")
    hf = read_json(path)
    if not isinstance(hf, dict):
        raise HFFolderError(f"{path}: expected a JSON object")
    return hf


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors or of the shards listed in model.safetensors.index.json."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFFolderError(f"{index}: no 'weight_map' object")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(folder, shard)
            if not os.path.exists(shard_path):
                raise HFFolderError(f"{index}: shard {shard} does not exist")
            tensors.update(load_file(shard_path))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise WeightMapError(index, missing=missing)
        return tensors
    raise HFFolderError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def strip_prefixes(tensors: dict[str, np.ndarray], spec: ArchSpec) -> dict[str, np.ndarray]:
    """Bare names: a known checkpoint prefix ("bert.", "model.") is removed; buffers without weights (position_ids) are dropped."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        bare = spec.strip_prefix(name)
        if spec.is_ignored_hf_tensor(bare):
            continue
        if bare in out:
            raise WeightMapError("checkpoint", unexpected=[f"{name} (duplicate of {bare})"])
        out[bare] = value
    return out


def config_from_folder(folder: str, **overrides: Any) -> tuple[ModelConfig, ArchSpec, dict[str, Any]]:
    """ModelConfig from config.json + the sentence-transformers files, then `overrides`."""
    hf = read_hf_config(folder)
    spec = arch_for_model_type(hf.get("model_type"), source=os.path.join(folder, "config.json"))
    try:
        fields = spec.config_from_hf(hf)
    except ValueError as e:
        raise HFFolderError(f"{os.path.join(folder, 'config.json')}: {e}") from e
    fields.update(read_st_settings(folder))
    if "max_seq_length" not in fields:
        fields["max_seq_length"] = min(512, int(hf.get("max_position_embeddings", 512)))
    fields["hf_config"] = hf
    cfg = ModelConfig(**fields)
    return cfg, spec, overrides


def load_hf_model(path: str | os.PathLike, **overrides: Any) -> tuple[ModelConfig, Params]:
    """(ModelConfig, params) from an HF / sentence-transformers folder.

    `overrides` replace ModelConfig fields after reading (e.g. dtype="bfloat16", remat=True).
    Raises HFFolderError (missing files, unsupported model_type) or WeightMapError (tensor mismatch).
    """
    folder = os.fspath(path)
    cfg, spec, overrides = config_from_folder(folder, **overrides)
    tensors = read_safetensors(folder)
    tensors = strip_prefixes(tensors, spec)
    cfg = spec.config_from_tensors(cfg, tensors.keys())
    cfg = cfg.replace(**overrides)
    try:
        params = spec.hf_to_flax(tensors, cfg)
    except WeightMapError as e:
        raise WeightMapError(folder, e.missing, e.unexpected, e.misshapen) from None
    return cfg, params

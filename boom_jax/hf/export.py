"""Export Flax params as a folder that transformers and sentence-transformers load directly.

The folder holds model.safetensors, config.json, the tokenizer files, modules.json,
sentence_bert_config.json, 1_Pooling/config.json, 2_Normalize/ (when normalize),
config_sentence_transformers.json (prompts, the model's similarity function), the README.md model
card and boom.json (provenance; boom_jax.hf.model_card).
It is written to a temporary sibling folder and renamed into place only when complete.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from boom_jax.atomic_io import atomic_folder, write_json
from boom_jax.hf.model_card import write_card_files
from boom_jax.hf.st_folder import read_json, write_st_files
from boom_jax.models.config import ModelConfig
from boom_jax.models.lora import fold_lora
from boom_jax.models.registry import get_arch
from boom_jax.tokenization import load_tokenizer

Params = dict[str, Any]
# config.json / tokenizer_config.json keys that point transformers at code in the source repository.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")


def flax_to_hf(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF tensors for `params` (LoRA adapters folded into the kernels first)."""
    if cfg.lora_rank:
        params = fold_lora(params, cfg)
        cfg = cfg.replace(lora_rank=0)
    return get_arch(cfg.arch).flax_to_hf(params, cfg)


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"output {out_dir!r} exists and is not a folder")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"output folder {out_dir!r} is not empty (pass overwrite=True to replace it)")


def strip_remote_code(hf_config: dict[str, Any]) -> dict[str, Any]:
    """config.json without the keys that make transformers run code from the source repository
    (the exported weights load into transformers' own classes)."""
    return {k: v for k, v in hf_config.items() if k not in REMOTE_CODE_KEYS}


def export_sentence_transformers(
    params: Params,
    cfg: ModelConfig,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Write the HF + sentence-transformers folder for (params, cfg) to `out_dir`; returns its path.

    `provenance`: how the model was made (boom_jax.hf.model_card), rendered into README.md and
    written as boom.json. Refuses a non-empty `out_dir` unless overwrite=True; then the old folder is replaced only once
    the new one is complete. Nothing is left behind when anything fails.
    """
    from safetensors.numpy import save_file

    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, overwrite)
    tensors = flax_to_hf(params, cfg)
    hf_config = strip_remote_code(get_arch(cfg.arch).config_to_hf(cfg))
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.model_max_length = cfg.max_seq_length
    tokenizer.padding_side = cfg.padding_side

    # _check_out_dir has refused a non-empty out_dir without overwrite; an existing one is swapped at the end.
    with atomic_folder(out_dir, overwrite=True) as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), hf_config)
        tokenizer.save_pretrained(tmp)
        _strip_tokenizer_remote_code(tmp)
        write_st_files(tmp, cfg)
        write_card_files(tmp, cfg, provenance)
    return out_dir


def _strip_tokenizer_remote_code(folder: str) -> None:
    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(path):
        config = read_json(path)
        if isinstance(config, dict) and any(k in config for k in REMOTE_CODE_KEYS):
            write_json(path, strip_remote_code(config))



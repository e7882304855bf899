"""What a finished training run leaves in its workdir: the model folder, the sentence-transformers
export and boom.json (how the model was made)."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from boom_jax.atomic_io import write_json
from boom_jax.hf import export_sentence_transformers
from boom_jax.hf.model_card import PROVENANCE_FILE
from boom_jax.model_io import save_model_folder
from boom_jax.models.lora import fold_lora


def write_outputs(config: ml_collections.ConfigDict, workdir: str, cfg, params: Any, tokenizer_dir: str,
                  provenance: dict | None = None) -> None:
    """DIR/model (a model folder, LoRA folded into the kernels), DIR/export (sentence-transformers, with
    its model card) and DIR/boom.json (`provenance`: how the model was made, when given)."""
    if provenance is not None:
        write_json(os.path.join(workdir, PROVENANCE_FILE), provenance)
    params = jax.device_get(params)
    if cfg.lora_rank > 0:
        params = fold_lora(params, cfg)
        cfg = cfg.replace(lora_rank=0, lora_dropout=0.0)
    if config.export.model_folder:
        save_model_folder(os.path.join(workdir, "model"), cfg, params, tokenizer_dir, overwrite=True)
    if config.export.sentence_transformers:
        export_sentence_transformers(params, cfg, tokenizer_dir, os.path.join(workdir, "export"), overwrite=True,
                                     provenance=provenance)

"""Export Flax params as a folder that transformers and sentence-transformers load directly.

The folder holds model.safetensors, config.json, the tokenizer files, modules.json,
sentence_bert_config.json, 1_Pooling/config.json, 2_Normalize/ (when normalize),
config_sentence_transformers.json (prompts, cosine similarity) and a README.md model card.
It is written to a temporary sibling folder and renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

from boom_jax.hf.st_folder import write_st_files
from boom_jax.models.config import ModelConfig
from boom_jax.models.registry import get_arch

Params = dict[str, Any]


def flax_to_hf(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF tensors for `params` (LoRA adapters folded into the kernels first)."""
    if cfg.lora_rank:
        from boom_jax.models.lora import fold_lora

        params = fold_lora(params, cfg)
        cfg = cfg.replace(lora_rank=0)
    return get_arch(cfg.arch).flax_to_hf(params, cfg)


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"output {out_dir!r} exists and is not a folder")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"output folder {out_dir!r} is not empty (pass overwrite=True to replace it)")


def model_card(cfg: ModelConfig) -> str:
    """A short README.md describing the exported model and how to load it."""
    prompts = "\n".join(f"- `{k}`: `{v!r}`" for k, v in sorted(cfg.prompts.items())) or "- (none)"
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
- boom_jax
---

# Text embedding model (exported by boom_jax)

- Architecture: `{cfg.arch}`, {cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size}
- Embedding dimension: {cfg.embedding_dim}; pooling: `{cfg.pooling}`; L2-normalized: {cfg.normalize}
- Max sequence length: {cfg.max_seq_length}; similarity: cosine

Prompts:
{prompts}

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("path/to/this/folder")
embeddings = model.encode(["A first sentence", "A second one"])
```
"""


def export_sentence_transformers(
    params: Params,
    cfg: ModelConfig,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
) -> str:
    """Write the HF + sentence-transformers folder for (params, cfg) to `out_dir`; returns its path.

    Refuses a non-empty `out_dir` unless overwrite=True; then the old folder is replaced only once
    the new one is complete. Nothing is left behind when anything fails.
    """
    from safetensors.numpy import save_file

    from boom_jax.tokenization import load_tokenizer

    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, overwrite)
    tensors = flax_to_hf(params, cfg)
    hf_config = get_arch(cfg.arch).config_to_hf(cfg)
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.model_max_length = cfg.max_seq_length
    tokenizer.padding_side = cfg.padding_side

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        import json

        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
            f.write("\n")
        tokenizer.save_pretrained(tmp)
        write_st_files(tmp, cfg)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(cfg))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: str, target: str) -> None:
    """Move the finished folder `new` to `target`, replacing an existing one only at the very end."""
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)

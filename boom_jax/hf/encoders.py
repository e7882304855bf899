"""The one path -> Encoder loader: a model folder, a train workdir or an HF / sentence-transformers folder.

Above the model layer on purpose: models/encoder.py holds the Encoder (params + tokenizer -> embeddings)
and knows nothing of folders; reading them (boom_jax/model_io.py, boom_jax/hf/loader.py) lives here, so the
encode / evaluate / mine commands and the evaluation runner share one loader.
"""

from __future__ import annotations

import os
from typing import Any

from jax.sharding import Mesh

from boom_jax.model_io import TOKENIZER_FILES, ModelFolderError, load_model, resolve_model_folder, tokenizer_dir_of
from boom_jax.models.encoder import Encoder
from boom_jax.tokenization import load_tokenizer


def load_encoder(path: str | os.PathLike, max_seq_length: int = 0, mesh: Mesh | None = None,
                 **overrides: Any) -> Encoder:
    """An Encoder for any model path boom_jax.model_io.load_model reads.

    `max_seq_length` > 0 replaces the model's maximum input length (longer inputs are truncated); `mesh`:
    split each call's rows over its devices (models.encoder.data_mesh); `overrides` replace other
    config fields (e.g. dtype). The tokenizer is checked before the weights are read (a missing one is the
    commoner mistake): ModelFolderError names the path, as for a missing or unrecognized one."""
    path = os.fspath(path)
    tokenizer_dir = tokenizer_dir_of(resolve_model_folder(path) or path)
    if tokenizer_dir is None:
        raise ModelFolderError(f"{path}: no tokenizer files found (expected one of {', '.join(TOKENIZER_FILES[:2])} "
                               f"in the folder or its tokenizer/)")
    cfg, params, _ = load_model(path)
    if max_seq_length:
        overrides["max_seq_length"] = int(max_seq_length)
    if overrides:
        cfg = cfg.replace(**overrides)
    return Encoder(cfg, params, load_tokenizer(tokenizer_dir), mesh=mesh)


__all__ = ["load_encoder"]

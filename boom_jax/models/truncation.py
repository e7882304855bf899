"""Matryoshka truncation at inference: the first ``dim`` coordinates of each embedding, re-normalized
when the model normalizes (the widths a model trained with loss.matryoshka_dims serves)."""

from __future__ import annotations

from typing import Any

import numpy as np


def truncate_embeddings(x: np.ndarray, dim: int, normalize: bool = True) -> np.ndarray:
    """``x[:, :dim]`` (float32), L2-normalized per row when ``normalize``; ``dim`` must be in 1..width."""
    x = np.asarray(x, np.float32)
    if not 1 <= dim <= x.shape[-1]:
        raise ValueError(f"truncate_dim={dim} must be between 1 and the embedding width {x.shape[-1]}")
    out = x[..., :dim]
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out)


class TruncatedEncoder:
    """An encoder (e.g. models.Encoder) whose ``encode`` returns the first ``dim`` coordinates,
    re-normalized when its config normalizes; every other attribute (``cfg``, ``params``, ...) is the
    wrapped encoder's."""

    def __init__(self, encoder: Any, dim: int):
        width = getattr(getattr(encoder, "cfg", None), "embedding_dim", None)
        if width is not None and not 1 <= dim <= width:
            raise ValueError(f"truncate_dim={dim} must be between 1 and the model's embedding width {width}")
        self.encoder = encoder
        self.truncate_dim = int(dim)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode(self, texts, *args, **kwargs) -> np.ndarray:
        normalize = getattr(getattr(self.encoder, "cfg", None), "normalize", True)
        return truncate_embeddings(self.encoder.encode(texts, *args, **kwargs), self.truncate_dim, normalize)

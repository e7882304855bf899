"""Pooling token states into one embedding per text: mean, cls, lasttoken; optional L2 normalization.

Shared by every architecture. All functions take hidden states [B, T, D] and an attention mask
[B, T] (1 = real token) and compute in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Average of the real tokens' states (as sentence-transformers: sum / clamp(count, 1e-9))."""
    m = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.clip(jnp.sum(m, axis=1), 1e-9, None)


def cls_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """State of the first position (the [CLS] token with right padding)."""
    del mask
    return hidden[:, 0].astype(jnp.float32)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row; right and left padding alike."""
    t = mask.shape[1]
    positions = jnp.arange(t)[None, :]
    return jnp.max(jnp.where(mask > 0, positions, 0), axis=1)


def lasttoken_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """State of the last real token (decoder embeddings; EOS when it was appended)."""
    idx = last_token_index(mask)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)


POOLERS = {"mean": mean_pool, "cls": cls_pool, "lasttoken": lasttoken_pool}


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


def pool(hidden: jax.Array, mask: jax.Array, mode: str, normalize: bool = False) -> jax.Array:
    """Pool with `mode` (a key of POOLERS), then L2-normalize if asked; float32 [B, D]."""
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r}: expected one of {sorted(POOLERS)}")
    out = POOLERS[mode](hidden, mask)
    return l2_normalize(out) if normalize else out

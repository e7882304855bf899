"""Pooling token states into one embedding per text: mean, cls, lasttoken; optional L2 normalization.

Shared by every architecture. All functions take hidden states [B, T, D] and an attention mask
[B, T] (1 = real token) and compute in float32. `pool(..., num_segments=S)` pools packed rows instead:
the mask is read as segment ids (0 = padding, 1..S = the texts of a row, see segments.py) and each
text is pooled on its own, [R, S, D].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boom_jax.models.segments import segment_ends, segment_starts


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
    """x / max(||x||, eps), as torch.nn.functional.normalize.

    Written as sqrt(max(sum(x^2), eps^2)) so that the gradient at x = 0 (an empty packed slot) is 0,
    not NaN.
    """
    squares = jnp.sum(x * x, axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squares, eps * eps))


def segment_pool_weights(segment_ids: jax.Array, mode: str, num_segments: int) -> jax.Array:
    """float32 [R, S, L]: the weight of token l in the embedding of segment s + 1 of row r.

    mean: 1 / (segment length) on the segment's tokens; cls: 1 on its first token; lasttoken: 1 on
    its last token. A segment id absent from a row gives a row of zeros.
    """
    ids = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    member = segment_ids[:, None, :] == ids[None, :, None]
    if mode == "cls":
        member = member & segment_starts(segment_ids)[:, None, :]
    elif mode == "lasttoken":
        member = member & segment_ends(segment_ids)[:, None, :]
    weights = member.astype(jnp.float32)
    if mode == "mean":
        weights = weights / jnp.clip(jnp.sum(weights, axis=-1, keepdims=True), 1e-9, None)
    return weights


def segment_pool(hidden: jax.Array, segment_ids: jax.Array, mode: str, num_segments: int) -> jax.Array:
    """float32 [R, S, D]: every packed segment pooled with `mode` (one einsum, no loop over segments).

    Empty slots (fewer than S texts in a row) are zeros.
    """
    weights = segment_pool_weights(segment_ids, mode, num_segments)
    return jnp.einsum(
        "rsl,rld->rsd", weights, hidden.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )


def pool(
    hidden: jax.Array,
    segment_ids: jax.Array,
    mode: str,
    normalize: bool = False,
    num_segments: int | None = None,
) -> jax.Array:
    """Pool with `mode` (a key of POOLERS), then L2-normalize if asked.

    num_segments None: `segment_ids` is an attention mask (tokens > 0 form one text per row), float32
    [B, D]. An int S: float32 [R, S, D], slot j - 1 = segment j of each row (zeros where absent; they
    stay zeros after normalization).
    """
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r}: expected one of {sorted(POOLERS)}")
    if num_segments is None:
        out = POOLERS[mode](hidden, segment_ids > 0)
    else:
        if num_segments < 1:
            raise ValueError(f"num_segments must be a positive int or None, got {num_segments!r}")
        out = segment_pool(hidden, segment_ids, mode, num_segments)
    return l2_normalize(out) if normalize else out

"""Segment ids of packed rows: which tokens belong to which text, their positions, who sees whom.

Every encoder reads its second input as segment ids, int [R, L]: 0 = padding, 1..S = the j-th text
packed in that row, each text's tokens contiguous. A plain 0/1 attention mask is the one-segment case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array) -> jax.Array:
    """bool [R, L]: True at the first token of every run of equal ids (position 0 always)."""
    first = jnp.ones_like(segment_ids[:, :1], dtype=bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def segment_ends(segment_ids: jax.Array) -> jax.Array:
    """bool [R, L]: True at the last token of every run of equal ids (the last position always)."""
    last = jnp.ones_like(segment_ids[:, :1], dtype=bool)
    return jnp.concatenate([segment_ids[:, :-1] != segment_ids[:, 1:], last], axis=1)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """int32 [R, L]: each token's offset from the first token of its run (0 at every text's start).

    Padding runs count from their own start too; their positions never reach a real token's output.
    """
    index = jnp.broadcast_to(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids.shape)
    start = jax.lax.cummax(jnp.where(segment_starts(segment_ids), index, 0), axis=1)
    return index - start


def segment_attention_mask(segment_ids: jax.Array, causal: bool = False) -> jax.Array:
    """bool [R, L, L] (query, key): True where the key has the query's segment id (and, when causal,
    comes no later than the query).

    A real token therefore sees only its own text; a padding query sees only padding keys (itself at
    least), so no softmax row is empty and padding never leaks into a text.
    """
    allowed = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
        length = segment_ids.shape[1]
        allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None]
    return allowed


__all__ = ["segment_attention_mask", "segment_ends", "segment_positions", "segment_starts"]

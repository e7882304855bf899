"""InfoNCE contrastive loss over groups [query, positive, hard negatives...].

Layout: queries ``q [B, D]`` and passages ``p [B * G, D]`` in *group layout*: rows
``i * G .. i * G + G - 1`` of ``p`` are query ``i``'s positive (first) and its ``G - 1`` hard negatives.

Scores are ``cos(q, p) / temperature``: the temperature divides the cosine similarity, so a small value
(the BOOM paper uses 0.02) sharpens the softmax; 1.0 leaves raw cosines in [-1, 1] as logits.

Negatives of a query:
- ``in_batch_negatives=True``: every passage of the (global) batch, i.e. its own hard negatives, the
  other queries' positives and their hard negatives. The label is the column of ITS positive, ``i * G``.
- ``in_batch_negatives=False`` (classification / clustering data): only its own group's ``G`` passages;
  the other columns are masked out, which equals a softmax over the group with label 0.

Cross-device negatives: inside ``shard_map`` (or any context with a named axis), pass ``axis_name``:
passages are all-gathered (tiled, in device order) over that axis, so the local query ``i`` on device
``d`` sees the whole global batch and its label is ``(d * B_local + i) * G`` in the gathered matrix. The
returned loss is the mean over the GLOBAL batch (a psum of local sums over the axis), so loss and
gradients equal the single-device computation on the concatenated batch.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | Sequence[str] | None

# Masked logits: large and negative, but finite so that exp/grad never produce NaN.
_MASKED_LOGIT = -1e9


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _axis_tuple(axis_name: AxisName) -> tuple[str, ...]:
    if axis_name is None:
        return ()
    if isinstance(axis_name, str):
        return (axis_name,)
    return tuple(axis_name)


def info_nce_per_query(
    q: jax.Array,
    p: jax.Array,
    temperature: float,
    in_batch_negatives: bool | jax.Array = True,
    axis_name: AxisName = None,
) -> jax.Array:
    """Per-query InfoNCE losses ``[B_local]`` (see the module docstring for layout and semantics).

    ``in_batch_negatives`` is a Python bool, a scalar bool array or a per-query ``[B]`` bool array
    (traced values are fine: the mode is applied by masking, so one compiled step serves both).
    """
    if q.ndim != 2 or p.ndim != 2:
        raise ValueError(f"info_nce expects q [B, D] and p [B*G, D]; got q {q.shape}, p {p.shape}")
    b, d = q.shape
    if p.shape[1] != d:
        raise ValueError(f"info_nce: q and p have different widths: q {q.shape}, p {p.shape}")
    if b == 0 or p.shape[0] % b != 0:
        raise ValueError(
            f"info_nce: passages ({p.shape[0]}) must be a multiple of queries ({b}) in group layout"
        )
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    g = p.shape[0] // b

    axes = _axis_tuple(axis_name)
    if axes:
        p_all = lax.all_gather(p, axes, axis=0, tiled=True)
        device_index = lax.axis_index(axes)
    else:
        p_all = p
        device_index = 0

    scores = _l2_normalize(q) @ _l2_normalize(p_all).T / temperature  # [B, N_global]
    global_row = device_index * b + jnp.arange(b)  # each local query's index in the global batch
    labels = global_row * g  # the column of ITS positive after gathering

    columns = jnp.arange(p_all.shape[0])
    own_group = (columns[None, :] // g) == global_row[:, None]  # [B, N_global]
    in_batch = jnp.broadcast_to(jnp.asarray(in_batch_negatives, dtype=bool), (b,))
    allowed = own_group | in_batch[:, None]
    scores = jnp.where(allowed, scores, _MASKED_LOGIT)

    log_norm = jax.nn.logsumexp(scores, axis=-1)
    positive = jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
    return log_norm - positive


def info_nce(
    q: jax.Array,
    p: jax.Array,
    temperature: float,
    in_batch_negatives: bool | jax.Array = True,
    axis_name: AxisName = None,
) -> jax.Array:
    """Mean InfoNCE loss over the global batch (a scalar, identical on every device of ``axis_name``)."""
    per_query = info_nce_per_query(q, p, temperature, in_batch_negatives, axis_name)
    axes = _axis_tuple(axis_name)
    total = jnp.sum(per_query)
    count = jnp.asarray(per_query.shape[0], jnp.float32)
    if axes:
        total = lax.psum(total, axes)
        count = lax.psum(count, axes)
    return total / count

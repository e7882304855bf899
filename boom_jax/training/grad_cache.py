"""Gradient cache: contrastive loss and parameter gradients for batches larger than device memory.

Three passes, all inside one jit (Gao et al., "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"):
1. forward every chunk of ``chunk_size`` sequences WITHOUT keeping activations -> all embeddings;
2. loss and its gradient w.r.t. the embeddings, on the cached embeddings (cheap: [N, D]);
3. re-forward each chunk under ``jax.vjp`` and pull the embedding gradients back into parameter
   gradients, summed over chunks.
Peak activation memory is that of one chunk, whatever the contrastive batch size. Each chunk's dropout
key is ``fold_in(rng, chunk_index)`` in both forwards, so passes 1 and 3 see identical masks and the
result equals the uncached gradient of :func:`embed_in_chunks` (same chunking, same keys).

Chunks are strided (chunk ``k`` holds rows ``k, k + n_chunks, ...``), so when the leading axis is
sharded over devices in contiguous blocks every chunk still spans all devices evenly.

Packed batches: the "sequences" are packed rows and ``embed_fn`` returns [R, S, D] per row; the loss
function gathers the texts' embeddings from them, so the cached gradient is [R, S, D] too and flows back
through the gather. Queries and passages may then need different embed functions (their S differ) and
chunk sizes: ``passage_embed_fn`` and ``passage_chunk_size``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

EmbedFn = Callable[[Any, jax.Array, jax.Array, "jax.Array | None"], jax.Array]
"""``embed_fn(params, ids [N, T], mask [N, T], rng or None) -> [N, D]``; rng None = deterministic."""


def _split_chunks(x: jax.Array, chunk_size: int, name: str) -> jax.Array:
    """[N, ...] -> [n_chunks, chunk_size, ...] with strided chunks (row r -> chunk r % n_chunks)."""
    n = x.shape[0]
    if chunk_size <= 0 or n % chunk_size != 0:
        raise ValueError(
            f"grad cache: {name} has {n} rows, not a multiple of the chunk size {chunk_size} "
            f"(grad_cache_chunk queries, times the group size for passages)"
        )
    n_chunks = n // chunk_size
    return jnp.swapaxes(x.reshape((chunk_size, n_chunks) + x.shape[1:]), 0, 1)


def _merge_chunks(x: jax.Array) -> jax.Array:
    """Inverse of :func:`_split_chunks`."""
    n_chunks, chunk_size = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((n_chunks * chunk_size,) + x.shape[2:])


def _chunk_rng(rng: jax.Array | None, index: jax.Array) -> jax.Array | None:
    return None if rng is None else jax.random.fold_in(rng, index)


def embed_in_chunks(
    embed_fn: EmbedFn,
    params: Any,
    ids: jax.Array,
    mask: jax.Array,
    rng: jax.Array | None,
    chunk_size: int,
) -> jax.Array:
    """Embeddings ``[N, D]`` computed chunk by chunk with the grad-cache dropout keys (differentiable)."""
    ids_c = _split_chunks(ids, chunk_size, "ids")
    mask_c = _split_chunks(mask, chunk_size, "mask")

    def body(_, xs):
        index, chunk_ids, chunk_mask = xs
        return None, embed_fn(params, chunk_ids, chunk_mask, _chunk_rng(rng, index))

    _, emb = lax.scan(body, None, (jnp.arange(ids_c.shape[0]), ids_c, mask_c))
    return _merge_chunks(emb)


def _pull_back(
    embed_fn: EmbedFn,
    params: Any,
    ids: jax.Array,
    mask: jax.Array,
    rng: jax.Array | None,
    emb_grad: jax.Array,
    chunk_size: int,
) -> Any:
    """Sum over chunks of vjp(embed_fn)(emb_grad chunk): the parameter gradient of <emb, emb_grad>."""
    ids_c = _split_chunks(ids, chunk_size, "ids")
    mask_c = _split_chunks(mask, chunk_size, "mask")
    grad_c = _split_chunks(emb_grad, chunk_size, "embedding gradients")

    def body(acc, xs):
        index, chunk_ids, chunk_mask, chunk_grad = xs
        _, vjp = jax.vjp(lambda p: embed_fn(p, chunk_ids, chunk_mask, _chunk_rng(rng, index)), params)
        (g,) = vjp(chunk_grad.astype(jnp.float32))
        return jax.tree.map(jnp.add, acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    acc, _ = lax.scan(body, zeros, (jnp.arange(ids_c.shape[0]), ids_c, mask_c, grad_c))
    return acc


def grad_cache_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    params: Any,
    query_ids: jax.Array,
    query_mask: jax.Array,
    passage_ids: jax.Array,
    passage_mask: jax.Array,
    rng: jax.Array | None,
    chunk_size: int,
    passage_chunk_size: int | None = None,
    passage_embed_fn: EmbedFn | None = None,
) -> tuple[jax.Array, Any]:
    """(loss, param grads) of ``loss_fn(embed(queries), embed(passages))`` with a gradient cache.

    ``chunk_size`` counts QUERIES per chunk (global, over all devices); the passages go in chunks of
    ``passage_chunk_size``, by default ``chunk_size * G`` (their group size), so both sides have the same
    number of chunks. Queries use key ``fold_in(rng, 0)`` and passages ``fold_in(rng, 1)`` (then the chunk
    index), the same as :func:`chunked_value_and_grad`, which is the memory-hungry reference it must equal.
    ``passage_embed_fn`` embeds the passages (default ``embed_fn``).
    """
    q_rng, p_rng = _query_passage_rngs(rng)
    p_chunk = passage_chunk_size or _passage_chunk(chunk_size, query_ids, passage_ids)
    p_embed = passage_embed_fn or embed_fn
    frozen = lax.stop_gradient(params)
    q = embed_in_chunks(embed_fn, frozen, query_ids, query_mask, q_rng, chunk_size)
    p = embed_in_chunks(p_embed, frozen, passage_ids, passage_mask, p_rng, p_chunk)
    loss, (q_grad, p_grad) = jax.value_and_grad(loss_fn, argnums=(0, 1))(q, p)
    grads_q = _pull_back(embed_fn, params, query_ids, query_mask, q_rng, q_grad, chunk_size)
    grads_p = _pull_back(p_embed, params, passage_ids, passage_mask, p_rng, p_grad, p_chunk)
    return loss, jax.tree.map(jnp.add, grads_q, grads_p)


def chunked_value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    params: Any,
    query_ids: jax.Array,
    query_mask: jax.Array,
    passage_ids: jax.Array,
    passage_mask: jax.Array,
    rng: jax.Array | None,
    chunk_size: int | None = None,
    passage_chunk_size: int | None = None,
    passage_embed_fn: EmbedFn | None = None,
) -> tuple[jax.Array, Any]:
    """(loss, param grads) by plain backprop; ``chunk_size`` (queries per chunk, as in
    :func:`grad_cache_value_and_grad`) None embeds each side in one call."""
    q_rng, p_rng = _query_passage_rngs(rng)
    p_embed = passage_embed_fn or embed_fn

    def total_loss(params):
        if chunk_size is None:
            q = embed_fn(params, query_ids, query_mask, _chunk_rng(q_rng, 0))
            p = p_embed(params, passage_ids, passage_mask, _chunk_rng(p_rng, 0))
        else:
            q = embed_in_chunks(embed_fn, params, query_ids, query_mask, q_rng, chunk_size)
            p_chunk = passage_chunk_size or _passage_chunk(chunk_size, query_ids, passage_ids)
            p = embed_in_chunks(p_embed, params, passage_ids, passage_mask, p_rng, p_chunk)
        return loss_fn(q, p)

    return jax.value_and_grad(total_loss)(params)


def _passage_chunk(chunk_size: int, query_ids: jax.Array, passage_ids: jax.Array) -> int:
    """Passages per chunk: ``chunk_size`` queries' groups."""
    b, n = query_ids.shape[0], passage_ids.shape[0]
    if b == 0 or n % b:
        raise ValueError(f"grad cache: {n} passages are not a multiple of the {b} queries (group layout)")
    return chunk_size * (n // b)


def _query_passage_rngs(rng: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    if rng is None:
        return None, None
    return jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)

"""Self-attention over segment masks: the explicit reference path and jax.nn.dot_product_attention.

`cfg.attention_impl` picks the path (ATTENTION_IMPLS):
- "reference": einsum logits in float32, `where(mask, logits, finfo.min)`, softmax, einsum. It
  materializes float32 [B, N, T, S] scores; attention-probability dropout (training with
  `attention_dropout > 0`) always takes this path, since the fused kernels cannot apply the project's
  hash dropout to the probabilities.
- "dot_product": `jax.nn.dot_product_attention(..., implementation=None)`. In jax 0.10.2 `None`
  always runs JAX's own XLA composition (the docstring's "currently falls back to xla"), which also
  forms float32 logits; XLA may fuse it, but no flash kernel is picked for you.
- "cudnn": `implementation="cudnn"` (NVIDIA GPUs, bf16 / fp16 only; an error elsewhere): the cuDNN
  flash-attention kernel, which never writes the [B, N, T, S] scores. What reaches the kernel: q, k,
  v in BTNH layout (GQA natively: K key/value heads, N = G * K query heads), `is_causal` as cuDNN's
  CAUSAL mask type, and the segment mask, which jax turns into an additive bias of shape [B, 1, T, S]
  in the compute dtype (one per row, shared by every head and layer) — cuDNN's packed-layout offsets
  are not exposed by jax.nn.dot_product_attention.
- "auto" (default): "cudnn" when the default backend is a GPU and the compute dtype is bf16 / fp16 (if
  the kernel refuses the shapes when the program is traced, "dot_product"); elsewhere "reference",
  since jax.nn.dot_product_attention brings no fused kernel there (same math; it also differs from
  the reference by float rounding that changes with the surrounding program).

Masks: `allowed` is the segment mask [B, T, S] (segments.segment_attention_mask without causality);
`causal` adds k <= q. Padding queries see padding keys, so no softmax row is ever fully masked.
Sources: the jax.nn.dot_product_attention docstring (jax 0.10.2: "`cudnn` supports only a subset of
shapes/dtypes, and an exception will be thrown if its not supported"; a boolean `mask` or an additive
`bias` broadcastable to BNTS), jax's cudnn wrapper (`combine_bias_and_mask`: a bool mask becomes a
bias of large negatives in the compute dtype) and cuDNN's SDPA support matrix (SM80+, fp16 / bf16,
head dim <= 128 for the backward pass on Ampere, <= 256 on Hopper).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from boom_jax.models.config import ATTENTION_IMPLS


def resolve_attention_impl(impl: str, dtype: jnp.dtype) -> str:
    """The concrete path ("reference" | "dot_product" | "cudnn") for `impl` and the compute dtype."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}: expected one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "reference"


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array,
    causal: bool,
    scale: float,
    probs_dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Explicit attention, q [B, T, N, H], k / v [B, S, K, H] (N a multiple of K) -> [B, T, N, H].

    Query head n uses key/value head n // (N / K) (transformers' repeat_kv). Logits and softmax in
    float32; probabilities cast to v's dtype for the second einsum. `probs_dropout` is applied to the
    probabilities [B, K, N / K, T, S].
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((t, k.shape[1]), bool))[None]
    logits = jnp.where(allowed[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if probs_dropout is not None:
        probs = probs_dropout(probs)
    context = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return context.reshape(b, t, n, h)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, causal: bool, scale: float, impl: str
) -> jax.Array:
    """jax.nn.dot_product_attention with the segment mask; `impl` "dot_product" | "cudnn" | "auto"."""
    mask = allowed[:, None, :, :]
    if impl == "dot_product":
        implementation = None
    elif impl in ("cudnn", "auto"):
        implementation = "cudnn"
    else:
        raise ValueError(f"fused_attention: impl={impl!r} is not a fused path")
    try:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=scale, is_causal=causal, implementation=implementation
        )
    except (ValueError, NotImplementedError, RuntimeError):
        if impl != "auto":
            raise
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array,
    *,
    causal: bool,
    impl: str,
    probs_dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Scaled (1 / sqrt(H)) dot-product attention within segments by `impl` (see the module doc).

    q [B, T, N, H], k / v [B, S, K, H] in the compute dtype; `allowed` bool [B, T, S]. With
    `probs_dropout` (attention dropout active) the reference path runs whatever `impl` says.
    """
    scale = q.shape[-1] ** -0.5
    path = resolve_attention_impl(impl, q.dtype)
    if probs_dropout is not None or path == "reference":
        return reference_attention(q, k, v, allowed, causal, scale, probs_dropout)
    if impl == "auto":
        path = "auto" if path == "cudnn" else path
    return fused_attention(q, k, v, allowed, causal, scale, path)


__all__ = ["ATTENTION_IMPLS", "attention", "fused_attention", "reference_attention", "resolve_attention_impl"]

"""Dropout whose mask is an integer hash of (key, element index), computed where it is used.

``flax.linen.Dropout`` draws its mask with ``jax.random.bernoulli``: a separate pass that writes a
32-bit random word per element (for attention probabilities, [batch, heads, T, T] of them per
layer) and reads it back. On CPU that pass was about a seventh of a MiniLM train step. Here the keep
decision of element ``i`` is ``hash(i, key) >= rate * 2**32`` with a two-round multiply-xorshift
hash of 32-bit integers: XLA fuses it into the multiply that applies the mask, so no random words
are stored, and the mask is the same however the array is sharded (it depends on the element's
global index only) and under ``vmap`` (per member key).

Statistically the masks are as good as dropout needs (each bit of the hash depends on every bit of
the index and the key; the keep rate is exact to 2**-32); they are not cryptographic random numbers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)
_MUL_1 = np.uint32(0x7FEB352D)
_MUL_2 = np.uint32(0x846CA68B)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finalizer (two xorshift-multiply rounds): full avalanche, vectorizes well."""
    x = x ^ (x >> 16)
    x = x * _MUL_1
    x = x ^ (x >> 15)
    x = x * _MUL_2
    return x ^ (x >> 16)


def _seed_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 words from a typed or raw PRNG key (any implementation)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.ravel(key).astype(jnp.uint32)
    return words[0], words[-1] ^ _GOLDEN


def hash_keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Bool mask of ``shape``: True (keep) with probability ``1 - rate``, a function of ``key`` and
    each element's flat index only (row and column index for arrays of 2**32 elements or more, e.g.
    the LoRA dropout of a 4B model's MLP input at a 1024 x 512-token chunk)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    size = int(np.prod(shape, dtype=np.int64))
    seed_a, seed_b = _seed_words(key)
    if size >= 2**32:
        bits = _row_column_bits(shape, seed_a, seed_b)
    else:
        index = jax.lax.iota(jnp.uint32, size).reshape(shape) if shape else jnp.zeros((), jnp.uint32)
        bits = _mix32(_mix32(index ^ seed_a) + seed_b)
    threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    return bits >= threshold


def _row_column_bits(shape: tuple[int, ...], seed_a: jax.Array, seed_b: jax.Array) -> jax.Array:
    """Hash bits for arrays of 2**32 elements or more, whose flat index does not fit 32 bits: element
    (row r of the leading axes flattened, column c of the last axis) gets
    ``mix32(mix32(c ^ mix32(r ^ seed_a)) + seed_b)`` (still a function of global indices only)."""
    rows, cols = int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]
    if rows >= 2**32 or cols >= 2**32:
        raise ValueError(f"hash dropout indexes rows and columns with 32 bits; shape {shape} has "
                         f"{rows} rows of {cols}")
    row = jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), 0)
    col = jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), 1)
    return _mix32(_mix32(col ^ _mix32(row ^ seed_a)) + seed_b).reshape(shape)


def hash_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: ``x / (1 - rate)`` where the mask keeps, 0 elsewhere."""
    if rate == 0.0:
        return x
    keep = hash_keep_mask(key, x.shape, rate)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Drop-in for ``flax.linen.Dropout`` (same ``rate`` / ``deterministic`` / "dropout" rng
    collection) with the fused hash mask above."""

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return hash_dropout(x, self.rate, self.make_rng(self.rng_collection))


__all__ = ["Dropout", "hash_dropout", "hash_keep_mask"]

"""Hash dropout: a NumPy reference of the mask, its keep rate, and invariance under sharding and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.models.dropout import Dropout, hash_dropout, hash_keep_mask


def mix(x: np.ndarray) -> np.ndarray:
    """The 32-bit finalizer in NumPy uint32 arithmetic (wrapping multiply)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def numpy_keep_mask(key_words: np.ndarray, shape: tuple, rate: float) -> np.ndarray:
    """The mask written out in NumPy, element by flat index."""
    words = key_words.ravel().astype(np.uint32)
    seed_a, seed_b = words[0], words[-1] ^ np.uint32(0x9E3779B9)
    index = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    with np.errstate(over="ignore"):
        bits = mix(mix(index ^ seed_a) + seed_b)
    return bits >= np.uint32(round(rate * 2.0**32))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_mask_equals_numpy_reference(impl):
    key = jax.random.key(7, impl=impl)
    shape = (3, 5, 17)
    got = np.asarray(jax.jit(hash_keep_mask, static_argnums=(1, 2))(key, shape, 0.25))
    want = numpy_keep_mask(np.asarray(jax.random.key_data(key)), shape, 0.25)
    np.testing.assert_array_equal(got, want)


def test_keep_rate_scaling_and_key_dependence():
    shape = (64, 12, 128)  # 98,304 elements: the keep rate's standard deviation is about 0.001
    x = jnp.ones(shape, jnp.float32)
    y = np.asarray(hash_dropout(x, 0.1, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.005
    np.testing.assert_allclose(y[kept], 1.0 / 0.9, rtol=1e-6)
    # neighbours are independent: P(both kept) ~ 0.81 along the last axis
    assert abs((kept[..., 1:] & kept[..., :-1]).mean() - 0.81) < 0.006
    # another key gives another mask (agreement 0.9^2 + 0.1^2 = 0.82 for independent masks)
    other = np.asarray(hash_keep_mask(jax.random.key(1), shape, 0.1))
    assert abs((other == kept).mean() - 0.82) < 0.006
    # the same key gives the same mask
    np.testing.assert_array_equal(np.asarray(hash_keep_mask(jax.random.key(0), shape, 0.1)), kept)


def test_mask_is_the_same_however_the_array_is_sharded():
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 6, 10)), jnp.float32)
    key = jax.random.key(3)
    single = np.asarray(jax.jit(hash_dropout, static_argnums=1)(x, 0.3, key))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
    sharded = jax.jit(hash_dropout, static_argnums=1)(sharded_x, 0.3, key)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(sharded), single)


def test_vmap_over_keys_equals_each_key_alone():
    keys = jax.random.split(jax.random.key(5), 3)
    x = jnp.ones((4, 9), jnp.float32)
    batched = jax.vmap(lambda k: hash_dropout(x, 0.5, k))(keys)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(hash_dropout(x, 0.5, keys[i])))


def test_module_is_identity_when_deterministic_and_gradient_uses_the_mask():
    x = jnp.arange(1.0, 41.0).reshape(4, 10)
    module = Dropout(0.5)
    np.testing.assert_array_equal(np.asarray(module.apply({}, x, deterministic=True)), np.asarray(x))
    rngs = {"dropout": jax.random.key(2)}
    y = module.apply({}, x, deterministic=False, rngs=rngs)
    grad = jax.grad(lambda v: module.apply({}, v, deterministic=False, rngs=rngs).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), np.where(np.asarray(y) != 0, 2.0, 0.0))


def test_bad_rate_is_an_error():
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\), got 1.0"):
        hash_keep_mask(jax.random.key(0), (3,), 1.0)


def test_masks_of_more_than_2_32_elements_index_rows_and_columns():
    """A [1024, 512, 9728] LoRA-dropout input (5.1e9 elements) gets a mask; the row/column hash is the
    NumPy formula below, checked on a slice computed with the same private helper."""
    from boom_jax.models.dropout import _row_column_bits, _seed_words

    big = (1024, 512, 9728)
    out = jax.eval_shape(lambda k: hash_keep_mask(k, big, 0.1), jax.random.key(0))
    assert out.shape == big and out.dtype == jnp.bool_

    key = jax.random.key(3)
    seed_a, seed_b = (np.uint32(w) for w in _seed_words(key))
    shape = (6, 4, 33)
    got = np.asarray(_row_column_bits(shape, jnp.uint32(seed_a), jnp.uint32(seed_b)))
    row = np.arange(24, dtype=np.uint32)[:, None]
    col = np.arange(33, dtype=np.uint32)[None, :]
    with np.errstate(over="ignore"):
        want = mix(mix(col ^ mix(row ^ seed_a)) + seed_b).reshape(shape)
    np.testing.assert_array_equal(got, want)
    kept = np.asarray(_row_column_bits((512, 256), jnp.uint32(seed_a), jnp.uint32(seed_b))) >= np.uint32(
        round(0.1 * 2.0**32))
    assert abs(kept.mean() - 0.9) < 0.01
    assert abs((kept[1:] & kept[:-1]).mean() - 0.81) < 0.01  # rows independent of each other

"""A packed train step equals the padded one: loss and gradients to 1e-5 through the real step, for a
tiny BERT and a tiny Qwen3 (left padding in the reference), with hard negatives, cross-device negatives
on the 8-device mesh and the gradient cache; the shard-local gather also serves shard_map."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from boom_jax.packing import pack_padded
from boom_jax.models import ModelConfig, build_model
from boom_jax.training.model_setup import random_params
from boom_jax.training.loss import info_nce
from boom_jax.training.sharding import BERT_RULES, QWEN3_RULES, make_mesh
from boom_jax.training.step import (
    gather_segments,
    init_train_state,
    make_train_step,
    module_embed_fn,
    train_state_shardings,
)

B, G, T, ROW = 8, 3, 12, 24
TEMPERATURE = 0.05
TINY = {
    "bert": dict(arch="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=32, has_pooler=False, pooling="mean",
                 normalize=True),
    "qwen3": dict(arch="qwen3", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=64, max_position_embeddings=64,
                  rope_theta=10000.0, pooling="lasttoken", normalize=True, padding_side="left"),
}
RULES = {"bert": BERT_RULES, "qwen3": QWEN3_RULES}


def _padded_side(rng, n, left):
    lengths = rng.integers(2, T + 1, size=n)
    cols = np.arange(T)[None, :]
    mask = ((cols >= T - lengths[:, None]) if left else (cols < lengths[:, None])).astype(np.int32)
    return rng.integers(1, 64, size=(n, T)).astype(np.int32) * mask, mask


def _batches(seed, arch, shards, row_multiple=1):
    """The same texts as a padded batch and as a packed one (laid out for `shards` batch shards)."""
    rng = np.random.default_rng(seed)
    left = TINY[arch]["padding_side"] == "left" if "padding_side" in TINY[arch] else False
    q_ids, q_mask = _padded_side(rng, B, left)
    p_ids, p_mask = _padded_side(rng, B * G, left)
    padded = {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask,
              "in_batch_negatives": np.asarray(True)}
    packed = {"in_batch_negatives": np.asarray(True), "pack_shards": shards}
    for side, ids, mask, slots in (("query", q_ids, q_mask, 2), ("passage", p_ids, p_mask, 4)):
        for key, value in pack_padded(ids, mask, ROW, slots, shards=shards, row_multiple=row_multiple).items():
            packed[f"{side}_{key}"] = value
    assert packed["passage_ids"].shape[0] < B * G  # really packed: fewer rows than texts
    return padded, packed


@pytest.fixture(scope="module", params=["bert", "qwen3"])
def model(request):
    cfg = ModelConfig(**TINY[request.param])
    return request.param, module_embed_fn(build_model(cfg)), random_params(cfg, seed=1)


def _grads_and_loss(step, state, batch):
    """(loss, gradient) of one step with SGD at lr 1: the update is minus the gradient."""
    new_state, metrics = step(state, batch)
    params = jax.device_get(state["params"])
    grads = jax.tree.map(lambda old, new: np.asarray(old) - np.asarray(new), params, jax.device_get(new_state["params"]))
    return float(metrics["loss"]), grads


def _assert_close(got, want):
    (loss_g, grads_g), (loss_w, grads_w) = got, want
    np.testing.assert_allclose(loss_g, loss_w, rtol=1e-5, atol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads_g), jax.tree_util.tree_leaves(grads_w)):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def _fresh(params, optimizer, shardings=None):
    state = init_train_state(jax.tree.map(jnp.asarray, params), optimizer, jax.random.key(0))
    return state if shardings is None else jax.device_put(state, shardings)


def test_packed_step_equals_padded_step(model):
    """On the 8-device mesh (data=2, fsdp=2, tensor=2: cross-device negatives over 4 batch shards, each
    packing its own texts; for qwen3 with the gradient cache, 2 chunks of rows) the packed step equals the
    padded single-device step."""
    arch, embed_fn, params = model
    optimizer = optax.sgd(1.0)
    padded, packed = _batches(0, arch, shards=1)
    want = _grads_and_loss(make_train_step(embed_fn, optimizer, TEMPERATURE, donate=False),
                           _fresh(params, optimizer), padded)
    assert np.abs(jax.tree.leaves(want[1])[0]).max() > 0

    mesh = make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    shardings = train_state_shardings(params, optimizer, jax.random.key(0), mesh, RULES[arch])
    _, packed4 = _batches(0, arch, shards=4, row_multiple=2)
    # bert: plain backprop; qwen3: the gradient cache with 2 chunks of rows (4 of the 8 queries each)
    chunk = None if arch == "bert" else 4
    sharded = make_train_step(embed_fn, optimizer, TEMPERATURE, mesh=mesh, state_shardings=shardings,
                              grad_cache_chunk=chunk, donate=False)
    _assert_close(_grads_and_loss(sharded, _fresh(params, optimizer, shardings), packed4), want)

    with pytest.raises(ValueError, match="laid out for 1 batch shards per host.*pack_shards=4"):
        sharded(_fresh(params, optimizer, shardings), packed)


def test_shard_local_gather_under_shard_map():
    """Each device's rows hold its own texts: gathering inside shard_map with local indices and
    cross-device negatives (info_nce axis_name) equals the global gather and loss."""
    rng = np.random.default_rng(3)
    mesh = make_mesh((("data", 4), ("fsdp", 2), ("tensor", 1)))
    shards, rows, slots, d = 8, 2, 3, 5
    q_rows = rng.normal(size=(shards * rows, slots, d)).astype(np.float32)
    p_rows = rng.normal(size=(shards * rows, slots, d)).astype(np.float32)
    q_index = np.concatenate([rng.choice(rows * slots, 1, replace=False) for _ in range(shards)]).astype(np.int32)
    p_index = np.concatenate([rng.choice(rows * slots, 2, replace=False) for _ in range(shards)]).astype(np.int32)
    want = info_nce(gather_segments(q_rows, q_index, shards), gather_segments(p_rows, p_index, shards), TEMPERATURE)

    spec = P(("data", "fsdp"))

    @partial(jax.shard_map, mesh=mesh, in_specs=(spec,) * 4, out_specs=P())
    def local(q, qi, p, pi):
        return info_nce(gather_segments(q, qi), gather_segments(p, pi), TEMPERATURE, axis_name=("data", "fsdp"))

    got = jax.jit(local)(q_rows, q_index, p_rows, p_index)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)

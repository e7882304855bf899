"""Gradient cache == plain backprop; sharded step (data=2, fsdp=2, tensor=2) == single-device step;
non-finite updates are skipped; optimizer schedule, weight-decay mask and trainable mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boom_jax.models import ModelConfig, build_model
from boom_jax.training.grad_cache import chunked_value_and_grad, grad_cache_value_and_grad
from boom_jax.training.loss import info_nce
from boom_jax.training.optim import make_optimizer, make_schedule
from boom_jax.training.sharding import BERT_RULES, make_mesh
from tests.helpers_tiny_models import TinyDropoutEncoder
from boom_jax.training.step import (
    init_train_state,
    make_eval_embed,
    make_train_step,
    module_embed_fn,
    train_state_shardings,
)

B, G, T = 8, 2, 8
TEMPERATURE = 0.05
TINY_BERT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=16, has_pooler=False,
)


def _random_params(cfg, seed=0):
    """Params with the model's tree and shapes, filled by NumPy (no init compile)."""
    module = build_model(cfg)
    ids = jnp.ones((1, T), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids, deterministic=True)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _batch(seed, in_batch=True):
    rng = np.random.default_rng(seed)
    q_mask = (np.arange(T)[None, :] < rng.integers(2, T + 1, size=(B, 1))).astype(np.int32)
    p_mask = (np.arange(T)[None, :] < rng.integers(2, T + 1, size=(B * G, 1))).astype(np.int32)
    return {
        "query_ids": rng.integers(1, 64, size=(B, T)).astype(np.int32) * q_mask,
        "query_mask": q_mask,
        "passage_ids": rng.integers(1, 64, size=(B * G, T)).astype(np.int32) * p_mask,
        "passage_mask": p_mask,
        "in_batch_negatives": np.asarray(in_batch),
        "dataset_index": np.zeros((B,), np.int32),
    }


@pytest.fixture(scope="module")
def dropout_model():
    module = TinyDropoutEncoder()
    ids = jnp.ones((1, T), jnp.int32)
    params = module.init(jax.random.key(0), ids, ids)["params"]
    return module_embed_fn(module), jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def plain_model():
    cfg = ModelConfig(**TINY_BERT)
    return module_embed_fn(build_model(cfg)), _random_params(cfg)


def _assert_trees_close(got, want, atol=1e-5, rtol=1e-5):
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=rtol, err_msg=str(path))


def test_grad_cache_equals_backprop_with_dropout(dropout_model):
    """Same chunks and dropout keys: the cached loss/grads equal plain backprop through the chunks."""
    embed_fn, params = dropout_model
    batch = _batch(0)
    loss_fn = lambda q, p: info_nce(q, p, TEMPERATURE, True)  # noqa: E731
    args = (params, batch["query_ids"], batch["query_mask"], batch["passage_ids"], batch["passage_mask"])
    rng = jax.random.key(3)

    @jax.jit
    def both(params, *inputs):
        cached = grad_cache_value_and_grad(embed_fn, loss_fn, params, *inputs, rng, chunk_size=4)
        plain = chunked_value_and_grad(embed_fn, loss_fn, params, *inputs, rng, chunk_size=4)
        return cached, plain

    (loss_c, grads_c), (loss_p, grads_p) = both(*args)
    np.testing.assert_allclose(float(loss_c), float(loss_p), rtol=1e-5)
    _assert_trees_close(grads_c, grads_p)
    # dropout is really on: other keys give other embeddings
    embed = jax.jit(embed_fn)
    ids, mask = batch["query_ids"], batch["query_mask"]
    assert np.abs(np.asarray(embed(params, ids, mask, rng) - embed(params, ids, mask, jax.random.key(4)))).max() > 1e-3
    with pytest.raises(ValueError, match="ids has 8 rows, not a multiple of the chunk size 3"):
        grad_cache_value_and_grad(embed_fn, loss_fn, *args, rng, chunk_size=3)


def _poisonable(embed_fn):
    """embed_fn whose output is NaN when a mask holds the value 2 (to provoke a non-finite loss)."""

    def embed(p, ids, mask, rng):
        emb = embed_fn(p, ids, jnp.minimum(mask, 1), rng)
        return emb * jnp.where(jnp.any(mask == 2), jnp.nan, 1.0)

    return embed


def _optimizer():
    # eps=1e-3: the key bias has a mathematically zero gradient (softmax is shift invariant); with a
    # tiny eps Adam would blow its float noise (which differs between layouts) up to lr-sized steps.
    return make_optimizer(1e-2, total_steps=10, warmup_steps=2, weight_decay=0.1, clip_norm=1.0, eps=1e-3)


@pytest.fixture(scope="module")
def single_device_step(plain_model):
    embed_fn, _ = plain_model
    optimizer, schedule = _optimizer()
    step = make_train_step(_poisonable(embed_fn), optimizer, TEMPERATURE, schedule, donate=False)
    return step, optimizer, schedule


def _run_steps(step, state, n_steps):
    metrics = []
    for i in range(n_steps):
        state, m = step(state, _batch(10 + i, in_batch=(i != 1)))  # step 1: own-group negatives only
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def test_sharded_step_equals_single_device(plain_model, single_device_step):
    """3 steps on the 8-device mesh (data=2, fsdp=2, tensor=2) equal the single-device run
    (cross-device negatives + hard negatives + global-mean loss + FSDP/tensor-sharded params)."""
    embed_fn, params = plain_model
    step, optimizer, schedule = single_device_step
    want_state, want_metrics = _run_steps(step, init_train_state(params, optimizer, jax.random.key(7)), 3)

    mesh = make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    shardings = train_state_shardings(params, optimizer, jax.random.key(7), mesh, BERT_RULES)
    state = jax.device_put(init_train_state(params, optimizer, jax.random.key(7)), shardings)
    sharded_step = make_train_step(
        _poisonable(embed_fn), optimizer, TEMPERATURE, schedule, mesh=mesh, state_shardings=shardings
    )
    got_state, got_metrics = _run_steps(sharded_step, state, 3)

    _assert_trees_close(got_state["params"], want_state["params"])
    for got, want in zip(got_metrics, want_metrics):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)
    assert int(got_state["step"]) == 3 and int(got_state["skipped"]) == 0
    # the params really moved, and the schedule's warmup shows in the metrics
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), want_state["params"], params)
    assert min(jax.tree.leaves(moved)) > 0
    assert [float(m["lr"]) for m in want_metrics] == pytest.approx([0.0, 5e-3, 1e-2])
    kernel_sharding = shardings["params"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    assert tuple(kernel_sharding.spec) == ("fsdp", "tensor")
    kernel = got_state["params"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    assert kernel.shape == (32, 64)


def test_non_finite_loss_skips_the_update(plain_model, single_device_step):
    _, params = plain_model
    step, optimizer, schedule = single_device_step
    state = init_train_state(params, optimizer, jax.random.key(0))
    poisoned = _batch(1)
    poisoned["query_mask"] = poisoned["query_mask"] * 2

    state1, m1 = step(state, _batch(10))
    state2, m2 = step(state1, poisoned)
    state3, m3 = step(state2, poisoned)
    state4, m4 = step(state3, _batch(12))
    assert [int(m["skipped"]) for m in (m1, m2, m3, m4)] == [0, 1, 1, 0]
    assert [int(m["consecutive_skipped"]) for m in (m1, m2, m3, m4)] == [0, 1, 2, 0]
    assert not np.isfinite(float(m2["loss"]))
    _assert_trees_close(state3["params"], state1["params"], atol=0, rtol=0)
    _assert_trees_close(state3["opt_state"], state1["opt_state"], atol=0, rtol=0)
    assert int(state4["step"]) == 4 and int(state4["skipped"]) == 2
    assert float(m4["lr"]) == pytest.approx(float(schedule(1)))  # one update applied before step 4
    diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), state4["params"], state3["params"])
    assert max(jax.tree.leaves(diff)) > 0


def test_optimizer_masks_and_schedule(plain_model):
    _, params = plain_model
    schedule = make_schedule(1.0, total_steps=10, warmup_steps=2, decay="cosine")
    assert [float(schedule(s)) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="optimizer.decay='exp'"):
        make_schedule(1.0, 10, decay="exp")

    # zero gradients: only weight decay moves params, and only matrices that are trainable
    optimizer, _ = make_optimizer(
        0.1, total_steps=10, weight_decay=0.5, clip_norm=None, trainable=lambda path: "attention" in path
    )
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    layer = updates["encoder"]["layer_0"]
    query = params["encoder"]["layer_0"]["attention"]["self"]["query"]
    np.testing.assert_allclose(layer["attention"]["self"]["query"]["kernel"], -0.1 * 0.5 * query["kernel"], rtol=1e-6)
    assert not np.any(layer["attention"]["self"]["query"]["bias"])  # no decay on biases
    assert not np.any(layer["attention"]["output"]["LayerNorm"]["scale"])  # nor on norms
    assert not np.any(layer["intermediate"]["dense"]["kernel"])  # frozen: not trainable


def test_eval_embed_sharded_matches_single_device(plain_model):
    embed_fn, params = plain_model
    batch = _batch(5)
    want = make_eval_embed(embed_fn)(params, batch["passage_ids"], batch["passage_mask"])
    mesh = make_mesh((("data", 4), ("fsdp", 2), ("tensor", 1)))
    got = make_eval_embed(embed_fn, mesh)(params, batch["passage_ids"], batch["passage_mask"])
    assert got.shape == (B * G, 32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

"""Speed options of the train step: dropout keys from a fast PRNG (deterministic in seed and step, so
resume stays exact) and the persistent compilation cache (a second process loads the compiled step
instead of recompiling it, with identical results)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boom_jax.training.compile_cache import cache_entries
from boom_jax.training.optim import make_optimizer
from tests.helpers_tiny_models import TinyDropoutEncoder
from boom_jax.training.step import DROPOUT_RNG_IMPLS, dropout_key, init_train_state, make_train_step, module_embed_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, G, T = 4, 2, 8


def _batch():
    rng = np.random.default_rng(0)
    return {
        "query_ids": rng.integers(1, 64, size=(B, T)).astype(np.int32),
        "query_mask": np.ones((B, T), np.int32),
        "passage_ids": rng.integers(1, 64, size=(B * G, T)).astype(np.int32),
        "passage_mask": np.ones((B * G, T), np.int32),
    }


def _mask(key):
    return np.asarray(jax.random.bernoulli(key, 0.5, (64,)))


def test_dropout_key_is_a_function_of_seed_and_step():
    raw, typed = jax.random.PRNGKey(7), jax.random.key(7)
    for impl in DROPOUT_RNG_IMPLS:
        a = dropout_key(raw, jnp.int32(3), impl)
        np.testing.assert_array_equal(_mask(a), _mask(dropout_key(raw, jnp.int32(3), impl)))
        np.testing.assert_array_equal(_mask(a), _mask(dropout_key(typed, jnp.int32(3), impl)))
        assert (_mask(a) != _mask(dropout_key(raw, jnp.int32(4), impl))).any()
        assert (_mask(a) != _mask(dropout_key(jax.random.PRNGKey(8), jnp.int32(3), impl))).any()
    assert jax.random.key_impl(dropout_key(raw, 3, "rbg")) == jax.random.key_impl(jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="'philox'.*expected one of"):
        dropout_key(raw, 3, "philox")
    with pytest.raises(ValueError, match="dropout_rng='philox'"):
        make_train_step(lambda *a: None, make_optimizer(1e-3, total_steps=2)[0], 0.05, dropout_rng="philox")


def test_train_step_with_rbg_dropout_is_reproducible():
    """Two runs from the same state agree bit for bit (what exact resume needs); the implementation
    really changes the masks (threefry gives another loss)."""
    module = TinyDropoutEncoder()
    params = module.init(jax.random.key(0), jnp.ones((1, T), jnp.int32), jnp.ones((1, T), jnp.int32))["params"]
    params = jax.tree.map(np.asarray, params)
    optimizer, _ = make_optimizer(1e-2, total_steps=4)
    batch = _batch()

    def run(impl):
        step = make_train_step(module_embed_fn(module), optimizer, 0.05, dropout_rng=impl)
        state = init_train_state(jax.tree.map(jnp.asarray, params), optimizer, jax.random.PRNGKey(1))
        losses = []
        for _ in range(2):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        return losses, jax.tree.map(np.asarray, state["params"])

    losses_a, params_a = run("rbg")
    losses_b, params_b = run("rbg")
    assert losses_a == losses_b
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert losses_a[1] != losses_a[0]  # the second step draws new masks (and has new params)
    losses_t, _ = run("threefry")
    assert losses_t[0] != losses_a[0]


CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from boom_jax.models import ModelConfig, build_model
from boom_jax.training.compile_cache import enable_compilation_cache
from boom_jax.training.optim import make_optimizer
from boom_jax.training.step import init_train_state, make_train_step, module_embed_fn

folder = enable_compilation_cache(sys.argv[1], min_compile_time_secs=0.0)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
cfg = ModelConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=16, has_pooler=False, dropout=0.1, attention_dropout=0.1)
module = build_model(cfg)
ids = jnp.ones((1, 8), jnp.int32)
shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids)["params"])
gen = np.random.default_rng(0)
params = jax.tree.map(lambda s: jnp.asarray(0.2 * gen.normal(size=s.shape), jnp.float32), shapes)
optimizer, _ = make_optimizer(1e-2, total_steps=4)
step = make_train_step(module_embed_fn(module), optimizer, 0.05)
state = init_train_state(params, optimizer, jax.random.PRNGKey(0))
batch = {k: np.asarray(v) for k, v in json.loads(sys.argv[2]).items()}
state, metrics = step(state, batch)
print(json.dumps({"folder": folder, "loss": float(metrics["loss"]),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_second_process_loads_the_train_step_from_the_cache(tmp_path):
    cache = str(tmp_path / "xla cache")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    batch = json.dumps({k: v.tolist() for k, v in _batch().items()})

    def child(cache_arg, **extra_env):
        out = subprocess.run([sys.executable, "-c", CHILD, cache_arg, batch], env=dict(env, **extra_env),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = child(cache)
    assert first["folder"] == cache and first["hits"] == 0 and first["misses"] >= 1
    stored = cache_entries(cache)
    assert stored, "the first process wrote no compiled program"
    # The user's JAX_COMPILATION_CACHE_DIR wins over the folder passed in.
    second = child(str(tmp_path / "unused"), JAX_COMPILATION_CACHE_DIR=cache)
    assert second["folder"] == cache
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["loss"] == first["loss"]
    assert cache_entries(cache) == stored
    assert not os.path.exists(tmp_path / "unused")

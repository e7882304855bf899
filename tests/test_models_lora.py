"""LoRA adapters on the Qwen3 encoder: exact no-op at init, folding, leaf selection, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boom_jax.hf.qwen3_weights import flax_to_hf
from boom_jax.models.config import ModelConfig
from boom_jax.models.lora import (
    LoRADense,
    add_lora_params,
    fold_lora,
    is_lora_leaf,
    lora_mask,
    lora_module_names,
    lora_param_count,
)
from boom_jax.models.qwen3 import Qwen3Encoder

ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
BASE = ModelConfig(
    arch="qwen3",
    vocab_size=100,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    pooling="lasttoken",
    normalize=False,
)
LORA = BASE.replace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, lora_targets=ALL_TARGETS)
IDS = jnp.asarray([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]], jnp.int32)
MASK = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)


def _forward(cfg):
    return jax.jit(lambda p: Qwen3Encoder(cfg).apply({"params": p}, IDS, MASK, return_token_states=True))


@pytest.fixture(scope="module")
def base_params():
    """Random float32 params in the module's tree (NumPy draws: no init compilation)."""
    shapes = jax.eval_shape(lambda r: Qwen3Encoder(BASE).init(r, IDS, MASK), jax.random.key(0))["params"]
    gen = np.random.default_rng(0)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return gen.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * gen.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def forwards():
    return {"base": _forward(BASE), "lora": _forward(LORA)}


@pytest.fixture(scope="module")
def lora_params(base_params):
    return jax.tree_util.tree_map(np.asarray, add_lora_params(base_params, LORA, jax.random.key(1)))


def _with_random_b(params, seed=2):
    gen = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (0.2 * gen.standard_normal(x.shape)).astype(np.float32) if is_lora_leaf(p) and p[-1].key == "lora_b" else x,
        params,
    )


def test_added_leaves_match_the_module_init(base_params, lora_params):
    init = jax.eval_shape(lambda r: Qwen3Encoder(LORA).init(r, IDS, MASK), jax.random.key(0))["params"]
    as_shapes = lambda t: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert as_shapes(init) == as_shapes(lora_params)
    q = lora_params["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_a"].shape == (32, 4) and q["lora_b"].shape == (4, 64)
    assert float(np.abs(q["lora_a"]).max()) <= 1 / np.sqrt(32) and float(np.std(q["lora_a"])) > 0.05
    assert float(np.abs(q["lora_b"]).max()) == 0.0
    # Base leaves are untouched; the added leaves depend only on the key.
    np.testing.assert_array_equal(q["kernel"], base_params["layers_0"]["self_attn"]["q_proj"]["kernel"])
    again = add_lora_params(base_params, LORA, jax.random.key(1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, lora_params)
    with pytest.raises(ValueError, match="already has LoRA leaves"):
        add_lora_params(lora_params, LORA, jax.random.key(1))


def test_zero_b_gives_exactly_the_base_output(base_params, lora_params, forwards):
    np.testing.assert_array_equal(forwards["lora"](lora_params), forwards["base"](base_params))


def test_folded_weights_equal_the_unfolded_forward(lora_params, forwards):
    params = _with_random_b(lora_params)
    unfolded = forwards["lora"](params)
    folded_params = fold_lora(params, LORA)
    assert not any(is_lora_leaf(p) for p, _ in jax.tree_util.tree_leaves_with_path(folded_params))
    folded = forwards["base"](folded_params)  # loads into the lora_rank=0 model
    np.testing.assert_allclose(folded, unfolded, atol=1e-5, rtol=0)
    assert np.abs(unfolded - forwards["lora"](lora_params)).max() > 1e-2  # B really changed the output
    # The kernel update is A @ B * alpha / r.
    node = params["layers_1"]["mlp"]["down_proj"]
    expected = node["kernel"] + node["lora_a"] @ node["lora_b"] * (8.0 / 4)
    np.testing.assert_allclose(folded_params["layers_1"]["mlp"]["down_proj"]["kernel"], expected, atol=1e-6)
    # HF export folds first: the same tensors as exporting the folded tree.
    exported, exported_folded = flax_to_hf(params, LORA), flax_to_hf(folded_params, BASE)
    assert sorted(exported) == sorted(exported_folded)
    for name in exported:
        np.testing.assert_array_equal(exported[name], exported_folded[name], err_msg=name)


def test_is_lora_leaf_picks_exactly_the_adapters(lora_params):
    picked = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(lora_params) if is_lora_leaf(p)}
    expected = {
        f"['layers_{i}']['{block}']['{proj}']['{leaf}']"
        for i in range(2)
        for block, projs in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
        for proj in projs
        for leaf in ("lora_a", "lora_b")
    }
    assert picked == expected
    mask = lora_mask(lora_params)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(lora_params)
    assert sum(jax.tree_util.tree_leaves(mask)) == 28
    d, f, q, kv, r = 32, 48, 64, 32, 4
    per_layer = r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
    assert lora_param_count(lora_params) == 2 * per_layer
    assert is_lora_leaf(("layers_0", "mlp", "up_proj", "lora_b")) and is_lora_leaf("a/b/lora_a")
    assert not is_lora_leaf(("layers_0", "mlp", "up_proj", "kernel")) and not is_lora_leaf(())


def test_targets_select_layers_and_bad_targets_fail(base_params):
    qv = add_lora_params(base_params, LORA.replace(lora_targets=("q", "v_proj")), jax.random.key(0))
    adapted = {p[-2].key for p, _ in jax.tree_util.tree_leaves_with_path(qv) if is_lora_leaf(p)}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="unknown target 'query'"):
        lora_module_names(["q", "query"])
    with pytest.raises(ValueError, match="lora_rank"):
        add_lora_params(base_params, BASE, jax.random.key(0))
    half = jax.tree_util.tree_map(lambda x: x, qv)
    del half["layers_0"]["self_attn"]["q_proj"]["lora_b"]
    with pytest.raises(ValueError, match="layers_0/self_attn/q_proj: LoRA leaf 'lora_b' is missing"):
        fold_lora(half, LORA)


def test_dropout_acts_on_the_adapter_input_only_when_training():
    layer = LoRADense(features=8, lora_rank=2, lora_alpha=2.0, lora_dropout=0.5)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((4, 6)).astype(np.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(1), x)["params"]
    assert {k: v.shape for k, v in shapes.items()} == {"kernel": (6, 8), "lora_a": (6, 2), "lora_b": (2, 8)}
    params = {k: gen.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}
    apply = jax.jit(
        lambda p, det, seed: layer.apply({"params": p}, x, deterministic=det, rngs={"dropout": jax.random.key(seed)}),
        static_argnums=1,
    )
    base = x @ params["kernel"]
    full = base + (x @ params["lora_a"] @ params["lora_b"]) * 1.0
    np.testing.assert_allclose(apply(params, True, 0), full, atol=1e-5)
    train_a, train_b = apply(params, False, 0), apply(params, False, 1)
    assert not np.allclose(train_a, full) and not np.allclose(train_a, train_b)
    # Only the adapter path is dropped: with lora_b = 0 training output equals the base output.
    zero_b = dict(params, lora_b=np.zeros((2, 8), np.float32))
    np.testing.assert_allclose(apply(zero_b, False, 0), base, atol=1e-6)

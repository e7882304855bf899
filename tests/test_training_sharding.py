"""Mesh specs, parameter rules (unmatched / indivisible errors), optimizer-state and batch shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from boom_jax.models import ModelConfig, init_params
from boom_jax.training.sharding import (
    BERT_RULES,
    DEFAULT_RULES,
    ShardingError,
    batch_sharding,
    make_mesh,
    param_partition_specs,
    param_shardings,
    partition_spec_for,
    shard_batch,
    shard_params,
    state_shardings_like,
)

MESH_SPEC = (("data", 2), ("fsdp", 2), ("tensor", 2))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MESH_SPEC)


@pytest.fixture(scope="module")
def bert_params():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def test_mesh_from_spec_fills_minus_one():
    mesh = make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh.devices.size == 8


@pytest.mark.parametrize(
    "spec, message",
    [
        ((("data", 3), ("fsdp", 2)), "needs 6 devices, but 8"),
        ((("data", -1), ("fsdp", 3)), "not divisible"),
        ((("data", -1), ("fsdp", -1)), "at most one axis"),
        ((("data", 8), ("data", 1)), "duplicate axis"),
    ],
)
def test_bad_mesh_spec_names_the_key(spec, message):
    with pytest.raises(ShardingError, match=message) as err:
        make_mesh(spec, key="config.mesh")
    assert "config.mesh" in str(err.value)


def test_bert_default_rules(mesh, bert_params):
    specs = param_partition_specs(bert_params, mesh, BERT_RULES)
    layer = specs["encoder"]["layer_0"]
    assert layer["attention"]["self"]["query"]["kernel"] == P("fsdp", "tensor")
    assert layer["output"]["dense"]["kernel"] == P("tensor", "fsdp")
    assert layer["output"]["LayerNorm"]["scale"] == P()
    assert specs["embeddings"]["word_embeddings"]["embedding"] == P("tensor", "fsdp")
    # type vocab 2 is divisible by 1 (None) and hidden by fsdp
    assert specs["embeddings"]["token_type_embeddings"]["embedding"] == P(None, "fsdp")


def test_unmatched_parameter_is_an_error_naming_it(mesh, bert_params):
    rules = tuple(r for r in BERT_RULES if "intermediate" not in r[0])
    with pytest.raises(ShardingError, match=r"'encoder/layer_0/intermediate/dense/kernel' .* matches no sharding rule"):
        param_partition_specs(bert_params, mesh, rules)


def test_indivisible_dimension_errors_unless_rule_allows_fallback(mesh):
    with pytest.raises(ShardingError, match=r"'w' \(6, 8\): dimension 0 \(size 6\) is not divisible .*'fsdp', 'tensor'"):
        partition_spec_for("w", (6, 8), mesh, ((r"^w$", (("fsdp", "tensor"), None)),))
    spec = partition_spec_for("w", (6, 8), mesh, ((r"^w$", (("fsdp", "tensor"), "data"), True),))
    assert spec == P(None, "data")
    with pytest.raises(ShardingError, match="mesh axis 'model' not in mesh axes"):
        partition_spec_for("w", (6, 8), mesh, ((r"^w$", ("model", None)),))
    with pytest.raises(ShardingError, match="2 entries for 1 dimensions"):
        partition_spec_for("w", (6,), mesh, ((r"^w$", (None, None)),))


def test_shard_params_and_optimizer_state_follow_params(mesh, bert_params):
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), bert_params)
    sharded = shard_params(params, mesh, DEFAULT_RULES["bert"])
    kernel = sharded["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (16, 32)
    np.testing.assert_array_equal(np.asarray(kernel), np.asarray(params["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]))

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_shapes = jax.eval_shape(opt.init, params)
    shardings = state_shardings_like(opt_shapes, params, param_shardings(params, mesh, BERT_RULES), mesh)
    adam = shardings[1][0]
    assert adam.mu["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"].spec == P("fsdp", "tensor")
    assert adam.nu["embeddings"]["word_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    assert adam.count.spec == P()


def test_batch_split_over_data_and_fsdp(mesh):
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    batch = shard_batch({"query_ids": np.zeros((8, 5), np.int32), "flag": np.asarray(True)}, mesh)
    assert batch["query_ids"].addressable_shards[0].data.shape == (2, 5)
    assert batch["flag"].sharding.spec == P()
    with pytest.raises(ShardingError, match=r"batch\['passage_ids'\] has leading size 6"):
        shard_batch({"passage_ids": jnp.zeros((6, 5))}, mesh)


def test_qwen3_default_rules_cover_lora_tree(mesh):
    cfg = ModelConfig(
        arch="qwen3", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=64, pooling="lasttoken",
        lora_rank=4, lora_alpha=4, lora_targets=("q", "k", "v", "o", "gate", "up", "down"),
    )
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    specs = param_partition_specs(shapes, mesh, DEFAULT_RULES["qwen3"])
    layer = specs["layers_0"]
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", "tensor")
    assert layer["self_attn"]["q_proj"]["lora_b"] == P(None, "tensor")
    assert layer["mlp"]["down_proj"]["kernel"] == P("tensor", "fsdp")
    assert layer["mlp"]["down_proj"]["lora_a"] == P("tensor", None)
    assert layer["self_attn"]["q_norm"]["scale"] == P()
    assert specs["norm"]["scale"] == P()
    assert specs["embed_tokens"]["embedding"] == P("tensor", "fsdp")

"""Qwen3 encoder: parity with transformers' Qwen3Model (left padding, GQA, head_dim != hidden/heads),
the HF <-> Flax weight map, bf16 compute and remat."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers_tiny_models import make_tiny_qwen3_folder
from safetensors.numpy import load_file, save_file
from transformers import AutoModel

from boom_jax.hf import qwen3_weights
from boom_jax.hf.errors import WeightMapError
from boom_jax.models.config import ModelConfig
from boom_jax.models.qwen3 import Qwen3Encoder

LENGTHS = (9, 5, 2)  # different lengths, left padded to T = 9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_qwen3_folder(tmp_path_factory.mktemp("qwen3"))
    hf_config = json.loads((Path(folder) / "config.json").read_text())
    cfg = ModelConfig(**qwen3_weights.config_from_hf(hf_config))
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    return folder, cfg, tensors


@pytest.fixture(scope="module")
def batch(tiny):
    _, cfg, _ = tiny
    rng = np.random.default_rng(0)
    t = max(LENGTHS)
    mask = np.zeros((len(LENGTHS), t), np.int32)
    for row, length in enumerate(LENGTHS):
        mask[row, t - length :] = 1
    ids = np.where(mask > 0, rng.integers(1, cfg.vocab_size, mask.shape), 0).astype(np.int32)
    return ids, mask


@pytest.fixture(scope="module")
def torch_states(tiny, batch):
    folder, _, _ = tiny
    ids, mask = batch
    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


def _apply(cfg, params, ids, mask, **kwargs):
    fn = jax.jit(lambda p, i, m: Qwen3Encoder(cfg).apply({"params": p}, i, m, **kwargs))
    return np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def params(tiny):
    _, cfg, tensors = tiny
    return jax.tree_util.tree_map(jnp.asarray, qwen3_weights.hf_to_flax(tensors, cfg))


@pytest.fixture(scope="module")
def f32_outputs(tiny, params, batch):
    """Token states and normalized embeddings from one compiled float32 forward."""
    _, cfg, _ = tiny
    ids, mask = batch
    model = Qwen3Encoder(cfg)

    def both(p, i, m):
        return model.apply({"params": p}, i, m, return_token_states=True), model.apply({"params": p}, i, m)

    states, embeddings = jax.jit(both)(params, ids, mask)
    return np.asarray(states), np.asarray(embeddings)


def test_config_from_hf_reads_decoder_fields(tiny):
    _, cfg, _ = tiny
    assert (cfg.arch, cfg.num_key_value_heads, cfg.head_dim, cfg.rope_theta) == ("qwen3", 2, 32, 10000.0)
    assert cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads
    assert (cfg.pooling, cfg.padding_side, cfg.append_eos, cfg.normalize) == ("lasttoken", "left", True, True)


def test_token_states_match_transformers_with_left_padding(batch, torch_states, f32_outputs):
    _, mask = batch
    states, embeddings = f32_outputs
    real = mask > 0
    np.testing.assert_allclose(states[real], torch_states[real], atol=1e-5, rtol=0)


def test_last_token_embedding_matches_transformers_last_position(torch_states, f32_outputs):
    _, embeddings = f32_outputs
    last = torch_states[:, -1]  # left padding: every row ends at the final position
    np.testing.assert_allclose(embeddings, last / np.linalg.norm(last, axis=-1, keepdims=True), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)


def test_bf16_compute_stays_close_to_f32(tiny, params, batch, f32_outputs):
    _, cfg, _ = tiny
    ids, mask = batch
    f32 = f32_outputs[1]
    bf16 = _apply(cfg.replace(dtype="bfloat16"), params, ids, mask)
    assert bf16.dtype == np.float32
    assert np.all(np.isfinite(bf16))
    cosine = np.sum(f32 * bf16, axis=-1)
    assert cosine.min() > 0.995, cosine
    assert 0 < np.abs(f32 - bf16).max() < 0.05


def test_remat_gradients_match_pytorch(tiny, params, batch):
    """Gradients through rematerialized layers equal PyTorch's autograd on the same loss."""
    folder, cfg, _ = tiny
    ids, mask = batch
    weights = np.random.default_rng(1).normal(size=(*ids.shape, cfg.hidden_size)).astype(np.float32)
    weights *= mask[..., None]
    remat_cfg = cfg.replace(remat=True)

    def loss(p, c):
        states = Qwen3Encoder(c).apply({"params": p}, ids, mask, return_token_states=True)
        return jnp.sum(states * weights)

    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(p, remat_cfg)))(params))
    assert "remat" in jaxpr and "remat" not in str(jax.make_jaxpr(jax.grad(lambda p: loss(p, cfg)))(params))
    grads = jax.jit(jax.grad(lambda p: loss(p, remat_cfg)))(params)

    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    states = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    (states.last_hidden_state * torch.from_numpy(weights)).sum().backward()
    torch_grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    ours = qwen3_weights.flax_to_hf(grads, cfg)
    assert sorted(ours) == sorted(torch_grads)
    # Error relative to each tensor's largest gradient (embedding gradients reach ~0.5).
    errors = {name: np.abs(ours[name] - ref).max() / np.abs(ref).max() for name, ref in torch_grads.items()}
    assert max(errors.values()) < 1e-5, errors


def test_init_matches_checkpoint_tree(tiny, params):
    _, cfg, _ = tiny
    ids = jnp.ones((1, 4), jnp.int32)
    init = jax.eval_shape(lambda r: Qwen3Encoder(cfg).init(r, ids, ids), jax.random.key(0))["params"]
    shapes = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), init)
    assert shapes == jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)


def test_weight_map_round_trip_and_causal_lm_names(tiny):
    _, cfg, tensors = tiny
    params = qwen3_weights.hf_to_flax(tensors, cfg)
    back = qwen3_weights.flax_to_hf(params, cfg)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # Qwen3ForCausalLM checkpoint: "model." prefix and an lm_head that the encoder ignores.
    causal = {f"model.{k}": v for k, v in tensors.items()}
    causal["lm_head.weight"] = tensors["embed_tokens.weight"]
    from_causal = qwen3_weights.hf_to_flax(causal, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_causal, params)


def test_weight_map_errors_name_the_tensor(tiny):
    _, cfg, tensors = tiny
    missing = {k: v for k, v in tensors.items() if k != "layers.1.self_attn.k_norm.weight"}
    with pytest.raises(WeightMapError, match=r"missing tensors \(1\): layers\.1\.self_attn\.k_norm\.weight"):
        qwen3_weights.hf_to_flax(missing, cfg)
    bad = dict(tensors)
    bad["layers.0.self_attn.k_proj.weight"] = np.zeros((128, 64), np.float32)
    with pytest.raises(WeightMapError, match=r"layers\.0\.self_attn\.k_proj\.weight: got \(128, 64\), expected \(64, 64\)"):
        qwen3_weights.hf_to_flax(bad, cfg)
    extra = dict(tensors, **{"layers.2.mlp.up_proj.weight": np.zeros((128, 64), np.float32)})
    with pytest.raises(WeightMapError, match=r"unexpected tensors \(1\): layers\.2\.mlp\.up_proj\.weight"):
        qwen3_weights.hf_to_flax(extra, cfg)
    params = qwen3_weights.hf_to_flax(tensors, cfg)
    del params["layers_1"]["mlp"]["down_proj"]
    with pytest.raises(WeightMapError, match=r"layers_1/mlp/down_proj/kernel"):
        qwen3_weights.flax_to_hf(params, cfg)


def test_config_from_hf_refuses_unsupported_features():
    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    with pytest.raises(ValueError, match="use_sliding_window"):
        qwen3_weights.config_from_hf(dict(base, use_sliding_window=True))
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        qwen3_weights.config_from_hf(dict(base, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6}))
    with pytest.raises(ValueError, match=r"missing keys \['intermediate_size'\]"):
        qwen3_weights.config_from_hf({k: v for k, v in base.items() if k != "intermediate_size"})
    legacy = qwen3_weights.config_from_hf(dict(base, rope_theta=1e6, rope_scaling=None))
    assert legacy["rope_theta"] == 1e6 and legacy["head_dim"] == 128 and legacy["num_key_value_heads"] == 2


def test_exported_tensors_load_into_transformers_without_gaps(tiny, tmp_path):
    folder, cfg, tensors = tiny
    params = qwen3_weights.hf_to_flax(tensors, cfg)
    out = tmp_path / "export"
    out.mkdir()
    save_file(qwen3_weights.flax_to_hf(params, cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text((Path(folder) / "config.json").read_text())
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_loader_reads_a_causal_lm_checkpoint(tiny, params, tmp_path):
    """A Qwen3ForCausalLM folder ("model." names plus an untied lm_head) loads through the registry."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from boom_jax.hf.loader import load_hf_model

    folder, cfg, tensors = tiny
    config = Qwen3Config.from_pretrained(folder, tie_word_embeddings=False)
    causal = Qwen3ForCausalLM(config)
    causal.model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    causal.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" in saved and "model.norm.weight" in saved
    loaded_cfg, loaded = load_hf_model(str(tmp_path))
    assert loaded_cfg.arch == "qwen3" and loaded_cfg.head_dim == 32
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.tree_util.tree_map(np.asarray, params))

"""Qwen3 weight map: Hugging Face tensor names <-> the Flax params of boom_jax.models.qwen3.

One explicit table per config (`name_map`): each entry is (hf_name, flax_path, kind), kind "dense"
(torch [out, in] <-> flax kernel [in, out]) or "copy". Names are Qwen3Model's (no "model." prefix);
`hf_to_flax` also accepts Qwen3ForCausalLM names ("model." prefix) and ignores its lm_head.
Imports only numpy and the model layer, so the registry can load it lazily.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from boom_jax.hf.errors import WeightMapError
from boom_jax.hf.name_maps import get_leaf as _get, params_from_tensors
from boom_jax.models.config import ModelConfig
from boom_jax.models.lora import fold_lora, has_lora

Params = dict[str, Any]
NameMap = list[tuple[str, tuple[str, ...], str]]

CAUSAL_LM_PREFIX = "model."
_IGNORED = ("lm_head.weight", "rotary_emb.inv_freq")

DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config default when config.json has no head_dim
DEFAULT_ROPE_THETA = 10_000.0


def _rope_theta(hf: Mapping[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"config.json: rope_type={rope_type!r} is not supported for qwen3 (only 'default')")
    return float(params.get("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA)))


def config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields from a Qwen3 config.json.

    Embedding head defaults are the Qwen3-Embedding ones: last-token pooling, left padding, EOS
    appended, L2-normalized (sentence-transformers files, when present, override them).
    Sliding-window attention, non-default RoPE, attention biases and activations other than silu are
    refused with the offending key named.
    """
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"config.json: missing keys {missing} for a Qwen3 model")
    if hf.get("use_sliding_window", False):
        raise ValueError("config.json: use_sliding_window=true is not supported for qwen3")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(f"config.json: layer_types {sorted(layer_types)} are not supported (only full_attention)")
    if hf.get("attention_bias", False):
        raise ValueError("config.json: attention_bias=true is not supported for qwen3")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported for qwen3 (only 'silu')")
    heads = int(hf["num_attention_heads"])
    return dict(
        arch="qwen3",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or DEFAULT_HEAD_DIM),
        intermediate_size=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(hf),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        hidden_act="silu",
        has_pooler=False,
        pooling="lasttoken",
        normalize=True,
        padding_side="left",
        append_eos=True,
    )


def ignored_hf_tensors(name: str) -> bool:
    """Tensors of Qwen3 checkpoints that the encoder does not use (the LM head, RoPE buffers)."""
    bare = name[len(CAUSAL_LM_PREFIX):] if name.startswith(CAUSAL_LM_PREFIX) else name
    return name in _IGNORED or bare in _IGNORED


def name_map(cfg: ModelConfig) -> NameMap:
    """Every tensor of a Qwen3Model checkpoint for `cfg` and where it lives in the Flax params."""
    entries: NameMap = [("embed_tokens.weight", ("embed_tokens", "embedding"), "copy")]
    for i in range(cfg.num_hidden_layers):
        hf, fx = f"layers.{i}", (f"layers_{i}",)
        entries.append((f"{hf}.input_layernorm.weight", fx + ("input_layernorm", "scale"), "copy"))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            entries.append((f"{hf}.self_attn.{proj}.weight", fx + ("self_attn", proj, "kernel"), "dense"))
        for norm in ("q_norm", "k_norm"):
            entries.append((f"{hf}.self_attn.{norm}.weight", fx + ("self_attn", norm, "scale"), "copy"))
        entries.append((f"{hf}.post_attention_layernorm.weight", fx + ("post_attention_layernorm", "scale"), "copy"))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            entries.append((f"{hf}.mlp.{proj}.weight", fx + ("mlp", proj, "kernel"), "dense"))
    entries.append(("norm.weight", ("norm", "scale"), "copy"))
    return entries


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape (torch layout), for validation before any conversion."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    hd = cfg.head_dim or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {"embed_tokens.weight": (cfg.vocab_size, d), "norm.weight": (d,)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (d,),
                f"{p}.self_attn.q_proj.weight": (q, d),
                f"{p}.self_attn.k_proj.weight": (kv, d),
                f"{p}.self_attn.v_proj.weight": (kv, d),
                f"{p}.self_attn.o_proj.weight": (d, q),
                f"{p}.self_attn.q_norm.weight": (hd,),
                f"{p}.self_attn.k_norm.weight": (hd,),
                f"{p}.post_attention_layernorm.weight": (d,),
                f"{p}.mlp.gate_proj.weight": (f, d),
                f"{p}.mlp.up_proj.weight": (f, d),
                f"{p}.mlp.down_proj.weight": (d, f),
            }
        )
    return shapes


def strip_causal_lm_names(tensors: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """Bare Qwen3Model names: drops the "model." prefix and the ignored tensors (lm_head, buffers).

    A tensor present both with and without the prefix is an error naming it.
    """
    out: dict[str, Any] = {}
    duplicated = []
    for name, value in tensors.items():
        if ignored_hf_tensors(name):
            continue
        bare = name[len(CAUSAL_LM_PREFIX):] if name.startswith(CAUSAL_LM_PREFIX) else name
        if bare in out:
            duplicated.append(bare)
        out[bare] = value
    if duplicated:
        raise WeightMapError(source, unexpected=[f"{n} (present with and without 'model.')" for n in duplicated])
    return out


def _leaf_paths(tree: Params, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _leaf_paths(value, prefix + (key,))
        else:
            out.append(prefix + (key,))
    return out


def hf_to_flax(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, source: str = "checkpoint") -> Params:
    """Flax params (float32 numpy) from Qwen3Model or Qwen3ForCausalLM names; all mismatches at once."""
    tensors = strip_causal_lm_names(tensors, source)
    return params_from_tensors(tensors, expected_shapes(cfg), name_map(cfg), source)


def flax_to_hf(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Qwen3Model tensors (float32, contiguous, no prefix) from Flax params; LoRA is folded first.

    A missing, unexpected or misshapen leaf raises WeightMapError naming its path.
    """
    if has_lora(params):
        params = fold_lora(params, cfg)
    entries = name_map(cfg)
    shapes = expected_shapes(cfg)
    known = {path for _, path, _ in entries}
    missing, misshapen, out = [], [], {}
    for hf_name, path, kind in entries:
        try:
            value = np.asarray(_get(params, path), dtype=np.float32)
        except (KeyError, TypeError):
            missing.append("/".join(path))
            continue
        want = shapes[hf_name][::-1] if kind == "dense" else shapes[hf_name]  # Flax layout
        if value.shape != want:
            misshapen.append(("/".join(path), value.shape, want))
        out[hf_name] = np.ascontiguousarray(value.T if kind == "dense" else value)
    unexpected = sorted("/".join(p) for p in _leaf_paths(params) if p not in known)
    if missing or unexpected or misshapen:
        raise WeightMapError("params", missing, unexpected, misshapen)
    return out

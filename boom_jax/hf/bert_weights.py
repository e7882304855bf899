"""BERT weight map: Hugging Face tensor names <-> the Flax params of boom_jax.models.bert.

One explicit table per config (`name_map`): each entry is (hf_name, flax_path, kind) where kind says
how the tensor is laid out: "dense" (torch [out, in] <-> flax kernel [in, out]) or "copy".
Imports only numpy and the model config, so the registry can load it lazily.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from boom_jax.hf.errors import WeightMapError
from boom_jax.hf.name_maps import get_leaf as _get, params_from_tensors
from boom_jax.models.config import ModelConfig

Params = dict[str, Any]
NameMap = list[tuple[str, tuple[str, ...], str]]


def config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields from a BERT config.json; anything other than absolute positions is refused."""
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"config.json: position_embedding_type={position_type!r} is not supported (only 'absolute')")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"config.json: missing keys {missing} for a BERT model")
    return dict(
        arch="bert",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        hidden_act=str(hf.get("hidden_act", "gelu")),
        pooling="cls",
    )


def config_from_tensors(cfg: ModelConfig, names: set[str]) -> ModelConfig:
    """Checkpoints saved without the HF pooler (some sentence-transformers exports) get has_pooler=False."""
    return cfg.replace(has_pooler="pooler.dense.weight" in names)


def ignored_hf_tensors(name: str) -> bool:
    """Buffers stored by older transformers versions that hold no learned weights."""
    return name in ("embeddings.position_ids", "embeddings.token_type_ids")


def _dense(hf: str, path: tuple[str, ...]) -> NameMap:
    return [(f"{hf}.weight", path + ("kernel",), "dense"), (f"{hf}.bias", path + ("bias",), "copy")]


def _layer_norm(hf: str, path: tuple[str, ...]) -> NameMap:
    return [(f"{hf}.weight", path + ("scale",), "copy"), (f"{hf}.bias", path + ("bias",), "copy")]


def name_map(cfg: ModelConfig) -> NameMap:
    """Every tensor of a BertModel checkpoint for `cfg` and where it lives in the Flax params."""
    entries: NameMap = [
        ("embeddings.word_embeddings.weight", ("embeddings", "word_embeddings", "embedding"), "copy"),
        ("embeddings.position_embeddings.weight", ("embeddings", "position_embeddings", "embedding"), "copy"),
        ("embeddings.token_type_embeddings.weight", ("embeddings", "token_type_embeddings", "embedding"), "copy"),
    ]
    entries += _layer_norm("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(cfg.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        for proj in ("query", "key", "value"):
            entries += _dense(f"{hf}.attention.self.{proj}", fx + ("attention", "self", proj))
        entries += _dense(f"{hf}.attention.output.dense", fx + ("attention", "output", "dense"))
        entries += _layer_norm(f"{hf}.attention.output.LayerNorm", fx + ("attention", "output", "LayerNorm"))
        entries += _dense(f"{hf}.intermediate.dense", fx + ("intermediate", "dense"))
        entries += _dense(f"{hf}.output.dense", fx + ("output", "dense"))
        entries += _layer_norm(f"{hf}.output.LayerNorm", fx + ("output", "LayerNorm"))
    if cfg.has_pooler:
        entries += _dense("pooler.dense", ("pooler",))
    return entries


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for validation before any conversion."""
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, d),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, d),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, d),
        "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for proj in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{p}.{proj}.weight"] = (d, d)
            shapes[f"{p}.{proj}.bias"] = (d,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}.{ln}.weight"] = (d,)
            shapes[f"{p}.{ln}.bias"] = (d,)
        shapes[f"{p}.intermediate.dense.weight"] = (f, d)
        shapes[f"{p}.intermediate.dense.bias"] = (f,)
        shapes[f"{p}.output.dense.weight"] = (d, f)
        shapes[f"{p}.output.dense.bias"] = (d,)
    if cfg.has_pooler:
        shapes["pooler.dense.weight"] = (d, d)
        shapes["pooler.dense.bias"] = (d,)
    return shapes


def hf_to_flax(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, source: str = "checkpoint") -> Params:
    """Flax params (float32 numpy) from bare HF names; every mismatch is reported at once."""
    return params_from_tensors(tensors, expected_shapes(cfg), name_map(cfg), source)


def flax_to_hf(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF BertModel tensors (float32, contiguous) from Flax params; a missing leaf names its path."""
    out: dict[str, np.ndarray] = {}
    for hf_name, path, kind in name_map(cfg):
        try:
            value = np.asarray(_get(params, path), dtype=np.float32)
        except (KeyError, TypeError):
            raise WeightMapError("params", missing=["/".join(path)]) from None
        out[hf_name] = np.ascontiguousarray(value.T if kind == "dense" else value)
    if not cfg.has_pooler:
        # transformers' BertModel always has a pooler; write an inert one (unused by embeddings)
        # so the exported folder loads without newly-initialized weights.
        d = cfg.hidden_size
        out["pooler.dense.weight"] = np.zeros((d, d), np.float32)
        out["pooler.dense.bias"] = np.zeros((d,), np.float32)
    return out


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for transformers' BertModel: the original one (if any) with the sizes of `cfg`."""
    hf = dict(cfg.hf_config)
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        hf.pop(key, None)
    hf.update(
        architectures=["BertModel"],
        model_type="bert",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        position_embedding_type="absolute",
        torch_dtype="float32",
    )
    hf.setdefault("pad_token_id", 0)
    hf.setdefault("hidden_dropout_prob", cfg.dropout)
    hf.setdefault("attention_probs_dropout_prob", cfg.attention_dropout)
    return hf

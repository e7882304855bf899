"""ModelConfig: everything needed to build an encoder and to write it back as a Hugging Face model."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from boom_jax.errors import ConfigError

POOLING_MODES = ("mean", "cls", "lasttoken")
COMPUTE_DTYPES = ("float32", "bfloat16")
PADDING_SIDES = ("right", "left")
# Runtime choices (see attention.py and layer_stack.py).
ATTENTION_IMPLS = ("auto", "reference", "dot_product", "cudnn")
REMAT_POLICY_NAMES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")
SIMILARITY_FUNCTIONS = ("cosine", "dot")  # sentence-transformers' similarity_fn_name values we keep


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture sizes plus the embedding head (pooling, normalize) and runtime choices.

    Encoder-only fields (type_vocab_size, hidden_act, layer_norm_eps) and decoder fields
    (num_key_value_heads, head_dim, rms_norm_eps, rope_theta, tie_word_embeddings) live side by side;
    each architecture reads the ones it needs. Params always stay float32; `dtype` is the compute dtype.
    """

    arch: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    # Encoder (BERT family).
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    has_pooler: bool = True
    # Decoder (Qwen3 family).
    num_key_value_heads: int = 0
    head_dim: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # Embedding head.
    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int = 256
    padding_side: str = "right"
    append_eos: bool = False
    prompts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    similarity: str = "cosine"  # how embeddings are compared (sentence-transformers' similarity_fn_name)
    # Runtime.
    dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing_saveable"  # what jax.checkpoint keeps per layer (REMAT_POLICY_NAMES)
    scan_layers: bool = False  # layers under one lax.scan (always with remat; params stay per layer)
    attention_impl: str = "auto"  # ATTENTION_IMPLS; see attention.py
    dropout: float = 0.0
    attention_dropout: float = 0.0
    # LoRA (0 = none).
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    # The original config.json, written back on export.
    hf_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"ModelConfig.pooling={self.pooling!r}: expected one of {POOLING_MODES}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"ModelConfig.dtype={self.dtype!r}: expected one of {COMPUTE_DTYPES}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ConfigError(
                f"ModelConfig.remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICY_NAMES}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"ModelConfig.attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}"
            )
        if self.padding_side not in PADDING_SIDES:
            raise ConfigError(
                f"ModelConfig.padding_side={self.padding_side!r}: expected one of {PADDING_SIDES}"
            )
        if self.similarity not in SIMILARITY_FUNCTIONS:
            raise ConfigError(f"ModelConfig.similarity={self.similarity!r}: expected one of {SIMILARITY_FUNCTIONS}")
        if self.hidden_size % self.num_attention_heads and not self.head_dim:
            raise ConfigError(
                f"ModelConfig.hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("max_seq_length", "num_hidden_layers", "hidden_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.dropout={self.dropout} must be in [0, 1)")
        # Normalize containers so equal configs hash and compare equal.
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "prompts", dict(self.prompts))
        object.__setattr__(self, "hf_config", dict(self.hf_config))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def embedding_dim(self) -> int:
        """Size of the pooled embedding."""
        return self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field."""
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys: {unknown}")
        data = dict(data)
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed; unknown fields are an error naming them."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys: {unknown}")
        return dataclasses.replace(self, **changes)

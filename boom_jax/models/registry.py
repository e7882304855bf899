"""Architecture registry: everything the project knows about one architecture, in one entry.

An `ArchSpec` says how to build the module, how to map its HF weights, how its parameters are
sharded (logical axis rules as data, read by training/sharding.py), whether it is encoder-only,
whether evaluation gives it task instructions, its input limit (`max_text_length`) and the layer
traits the memory model counts (gated MLP, q/k norm, pre-norm, grouped-query attention). Code outside
models/ and hf/ asks the spec (`get_arch(cfg.arch).encoder_only`, `max_text_length(cfg)`) instead of
comparing `cfg.arch` with a name.

Each ArchSpec field that holds code may be a callable or a "module:attribute" string that is
imported on first use, so the registry stays cheap to import and free of import cycles (the weight
maps live in boom_jax/hf/ and import only numpy and models/config.py).

To add an architecture: one model file (models/NAME.py), one weights file (hf/NAME_weights.py with
config_from_hf, hf_to_flax, flax_to_hf and optionally config_from_tensors, ignored_hf_tensors,
config_to_hf) and one ARCHS entry below, e.g.
    "qwen3": ArchSpec(name="qwen3", model_types=("qwen3",), module="boom_jax.models.qwen3:Qwen3Encoder",
                      weights="boom_jax.hf.qwen3_weights", hf_prefixes=("model.",),
                      hf_architectures=("Qwen3Model",), sharding_rules=QWEN3_RULES, ...).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from boom_jax.models.config import ModelConfig

Params = dict[str, Any]
Rule = tuple  # (pattern, spec) or (pattern, spec, replicate_if_indivisible); see training/sharding.py

# Sharding rules per architecture (format and semantics: training/sharding.py's module docstring).
# Kernels are [in, out]. Column-parallel layers split `out` over "tensor", row-parallel ones split
# `in`; the other dimension is split over "fsdp". Norm scales and biases are small: replicated.
BERT_RULES: tuple[Rule, ...] = (
    (r"LayerNorm/(scale|bias)$", None),
    (r"/bias$", None),
    (r"embeddings/word_embeddings/embedding$", ("tensor", "fsdp"), True),
    (r"embeddings/(position|token_type)_embeddings/embedding$", (None, "fsdp"), True),
    (r"attention/self/(query|key|value)/kernel$", ("fsdp", "tensor")),
    (r"intermediate/dense/kernel$", ("fsdp", "tensor")),
    (r"attention/output/dense/kernel$", ("tensor", "fsdp")),
    (r"output/dense/kernel$", ("tensor", "fsdp")),
    (r"pooler/kernel$", ("fsdp", "tensor")),
    (r"/lora_a$", ("fsdp", None)),
    (r"/lora_b$", (None, "tensor")),
)

QWEN3_RULES: tuple[Rule, ...] = (
    (r"(norm|layernorm)[^/]*/scale$", None),
    (r"/bias$", None),
    (r"embed_tokens/embedding$", ("tensor", "fsdp"), True),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", ("fsdp", "tensor")),
    (r"(o_proj|down_proj)/kernel$", ("tensor", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/lora_a$", ("fsdp", None)),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/lora_b$", (None, "tensor")),
    (r"(o_proj|down_proj)/lora_a$", ("tensor", None)),
    (r"(o_proj|down_proj)/lora_b$", (None, "fsdp")),
)

# The length cap of an architecture without a position table (rotary positions): no cap.
UNLIMITED_LENGTH = 1 << 30


class UnsupportedArchitectureError(ValueError):
    """An arch name or HF model_type that no registry entry handles."""


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How one architecture is built and how its weights map to and from Hugging Face names.

    module: callable cfg -> flax.linen.Module (a class or a "module:Class" string).
    weights: a module (or its dotted name) providing
      config_from_hf(hf_dict) -> dict of ModelConfig fields,
      hf_to_flax(tensors: dict[name, np.ndarray], cfg) -> params (names already stripped of prefixes;
        raises WeightMapError naming missing / unexpected / misshapen tensors),
      flax_to_hf(params, cfg) -> dict[name, np.ndarray],
      optionally config_from_tensors(cfg, names) -> cfg (e.g. "is there a pooler?"),
      ignored_hf_tensors(name) -> bool (buffers such as position_ids that carry no weights) and
      config_to_hf(cfg) -> config.json dict for export (default: cfg.hf_config as read).
    hf_prefixes: prefixes that checkpoints may put before the bare names ("bert.", "model.").
    hf_architectures: the config.json "architectures" written on export.
    sharding_rules: the logical axis rules of its parameters (training/sharding.py applies them; a
      parameter matching none is an error there).
    encoder_only: a bidirectional encoder (BERT family): no LoRA (the LoRA targets are decoder
      projections), no last-token pooling.
    uses_instructions: evaluation puts the task instruction before queries and symmetric-task texts
      (instruction-tuned decoder embedders such as Qwen3-Embedding).
    max_positions_field: the ModelConfig field bounding the tokens per text (a learned position
      table), or None when the positions are rotary and no cap applies (see `max_text_length`).
    gated_mlp: the MLP is gate/up/down (SwiGLU: three matrices) instead of intermediate/output.
    qk_norm: per-head norm (and rotary) on q and k, so both are kept before and after it.
    pre_norm: norms before each block; the block's last projection only feeds the residual add.
    grouped_query_attention: q / kv widths come from head_dim and num_key_value_heads.
    """

    name: str
    model_types: tuple[str, ...]
    module: Any
    weights: Any
    hf_prefixes: tuple[str, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    sharding_rules: tuple[Rule, ...] = ()
    encoder_only: bool = False
    uses_instructions: bool = False
    max_positions_field: str | None = None
    gated_mlp: bool = False
    qk_norm: bool = False
    pre_norm: bool = False
    grouped_query_attention: bool = False

    def build_module(self, cfg: ModelConfig):
        return _resolve(self.module)(cfg)

    def _weights(self) -> Any:
        return _resolve(self.weights)

    def config_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        return self._weights().config_from_hf(hf_config)

    def config_from_tensors(self, cfg: ModelConfig, names: Iterable[str]) -> ModelConfig:
        fn = getattr(self._weights(), "config_from_tensors", None)
        return fn(cfg, set(names)) if fn else cfg

    def is_ignored_hf_tensor(self, name: str) -> bool:
        fn = getattr(self._weights(), "ignored_hf_tensors", None)
        return bool(fn(name)) if fn else False

    def hf_to_flax(self, tensors: Mapping[str, np.ndarray], cfg: ModelConfig) -> Params:
        return self._weights().hf_to_flax(tensors, cfg)

    def flax_to_hf(self, params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
        return self._weights().flax_to_hf(params, cfg)

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """config.json for export: the weights module's config_to_hf, else the original config."""
        fn = getattr(self._weights(), "config_to_hf", None)
        return fn(cfg) if fn else dict(cfg.hf_config)

    def strip_prefix(self, name: str, expected: set[str] | None = None) -> str:
        """`name` without a known checkpoint prefix (only when the bare name is expected, if given)."""
        for prefix in self.hf_prefixes:
            if name.startswith(prefix):
                bare = name[len(prefix):]
                if expected is None or bare in expected:
                    return bare
        return name


ARCHS: dict[str, ArchSpec] = {
    "bert": ArchSpec(
        name="bert",
        model_types=("bert",),
        module="boom_jax.models.bert:BertEncoder",
        weights="boom_jax.hf.bert_weights",
        hf_prefixes=("bert.", "model.", "0.auto_model."),
        hf_architectures=("BertModel",),
        sharding_rules=BERT_RULES,
        encoder_only=True,
        max_positions_field="max_position_embeddings",
    ),
    "qwen3": ArchSpec(
        name="qwen3",
        model_types=("qwen3",),
        module="boom_jax.models.qwen3:Qwen3Encoder",
        weights="boom_jax.hf.qwen3_weights",
        hf_prefixes=("model.", "0.auto_model."),
        hf_architectures=("Qwen3Model",),
        sharding_rules=QWEN3_RULES,
        uses_instructions=True,
        gated_mlp=True,
        qk_norm=True,
        pre_norm=True,
        grouped_query_attention=True,
    ),
}


def get_arch(name: str) -> ArchSpec:
    """The spec registered under `name`; a clear error listing the known ones otherwise."""
    if name not in ARCHS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {name!r}: known architectures are {sorted(ARCHS)}"
        )
    return ARCHS[name]


def arch_for_model_type(model_type: str | None, source: str = "config.json") -> ArchSpec:
    """The spec handling an HF `model_type`; the error names the file and the supported types."""
    for spec in ARCHS.values():
        if model_type in spec.model_types:
            return spec
    supported = sorted(t for s in ARCHS.values() for t in s.model_types)
    raise UnsupportedArchitectureError(
        f"{source}: unsupported model_type {model_type!r}; supported model types: {supported}"
    )


def max_text_length(cfg: ModelConfig) -> int:
    """The most tokens one text may have for this model's architecture (queries and passages alike).

    A learned position table bounds it (BERT: `cfg.max_position_embeddings`); rotary architectures
    have no cap (`UNLIMITED_LENGTH`). Callers take `min(config.data.query_max_len, max_text_length(cfg))`.
    """
    field = get_arch(cfg.arch).max_positions_field
    return int(getattr(cfg, field)) if field else UNLIMITED_LENGTH


def arch_names(**traits: bool) -> tuple[str, ...]:
    """The registered arch names whose spec has every given trait, e.g. `arch_names(encoder_only=True)`."""
    return tuple(name for name, spec in ARCHS.items()
                 if all(getattr(spec, key) == value for key, value in traits.items()))


def build_model(cfg: ModelConfig):
    """The flax.linen.Module for `cfg`; apply returns pooled float32 embeddings [B, D]."""
    return get_arch(cfg.arch).build_module(cfg)


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> Params:
    """Random params for `cfg` (tests, tiny configs): a plain nested dict of float32 arrays.

    Runs the module's init eagerly: on CPU that beats compiling a fresh init program per config
    (the small per-op programs are shared by every later init).
    """
    module = build_model(cfg)
    ids = jnp.ones((1, seq_len), jnp.int32)
    variables = module.init(rng, ids, jnp.ones_like(ids), deterministic=True)
    return to_plain_dict(variables["params"])


def to_plain_dict(tree: Any) -> Params:
    """Nested mappings (FrozenDict or dict) as plain nested dicts, leaves untouched."""
    if isinstance(tree, Mapping):
        return {str(k): to_plain_dict(v) for k, v in tree.items()}
    return tree

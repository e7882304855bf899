"""Qwen3-style decoder used as a text encoder (Qwen3-Embedding family), in Flax.

Matches transformers' Qwen3Model: token embeddings; per layer a pre-RMSNorm block with grouped-query
causal attention (q_norm / k_norm RMSNorm over head_dim before rotary embeddings, head_dim may differ
from hidden_size / num_attention_heads) and a SwiGLU MLP; a final RMSNorm. The second input is read
as segment ids (0 = padding, 1..S = the texts packed in a row; a 0/1 mask is the one-text case, see
segments.py): a token attends causally within its own segment, and rotary positions restart at 0 at
each segment's first token. With left padding Qwen3Model gives the real tokens positions T-len..T-1
instead; RoPE depends only on relative positions, so the states agree to float error. Embeddings are
the last real token's state (`pooling="lasttoken"`), optionally L2-normalized; `num_segments=S`
gives every segment's, [R, S, D].

Params are float32; `cfg.dtype` is the compute dtype (RMSNorm statistics, attention softmax and
pooling stay float32). Dense layers named in `cfg.lora_targets` carry LoRA adapters when
`cfg.lora_rank > 0` (see lora.py). Submodule names mirror the Hugging Face names, so the weight
map in boom_jax/hf/qwen3_weights.py is one rule per tensor.

`cfg.dropout` (0 for Qwen3 checkpoints) drops the attention and MLP outputs before each residual
add; `cfg.attention_dropout` drops attention probabilities. Both act only when not deterministic.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boom_jax.models.attention import attention
from boom_jax.models.config import ConfigError, ModelConfig
from boom_jax.models.dropout import Dropout
from boom_jax.models.layer_stack import run_layers
from boom_jax.models.lora import LoRADense, lora_module_names
from boom_jax.models.pooling import pool
from boom_jax.models.segments import segment_attention_mask, segment_positions


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def qwen3_head_dim(cfg: ModelConfig) -> int:
    """head_dim from the config, or hidden_size / num_attention_heads when it is 0 (unset)."""
    return cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads


def validate_qwen3_config(cfg: ModelConfig) -> None:
    """Raises ConfigError naming the field when the config cannot describe a Qwen3 encoder."""
    kv = cfg.num_key_value_heads
    if kv <= 0:
        raise ConfigError(f"ModelConfig.num_key_value_heads={kv} must be positive for arch 'qwen3'")
    if cfg.num_attention_heads % kv:
        raise ConfigError(
            f"ModelConfig.num_attention_heads={cfg.num_attention_heads} is not a multiple of "
            f"num_key_value_heads={kv}"
        )
    if qwen3_head_dim(cfg) % 2:
        raise ConfigError(f"ModelConfig.head_dim={qwen3_head_dim(cfg)} must be even for rotary embeddings")
    if cfg.attention_bias:
        raise ConfigError("ModelConfig.attention_bias=True is not supported for arch 'qwen3'")
    if cfg.lora_rank < 0:
        raise ConfigError(f"ModelConfig.lora_rank={cfg.lora_rank} must be >= 0")
    if cfg.lora_rank > 0:
        if not cfg.lora_targets:
            raise ConfigError("ModelConfig.lora_targets is empty while lora_rank > 0")
        try:
            lora_module_names(cfg.lora_targets)
        except ValueError as err:
            raise ConfigError(f"ModelConfig.{err}") from None


def rope_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i / head_dim) for i < head_dim / 2, in float32 as transformers computes it."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [..., T, head_dim] (frequencies repeated twice, HF's rotate_half layout), f32."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inverse_frequencies(head_dim, theta))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embeddings on x [B, T, H, D] with cos/sin [B or 1, T, D] (cast to x's dtype as HF)."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, statistics in float32 (Qwen3RMSNorm)."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * y.astype(self.dtype)


def _dense(cfg: ModelConfig, features: int, name: str) -> LoRADense:
    adapted = cfg.lora_rank > 0 and name in lora_module_names(cfg.lora_targets)
    return LoRADense(
        features=features,
        lora_rank=cfg.lora_rank if adapted else 0,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        dtype=compute_dtype(cfg),
        name=name,
    )


class Qwen3Attention(nn.Module):
    """Grouped-query causal self-attention with q/k RMSNorm and rotary embeddings."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, allowed: jax.Array, cos: jax.Array, sin: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.cfg
        dtype = compute_dtype(cfg)
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, qwen3_head_dim(cfg)
        b, t, _ = x.shape

        q = _dense(cfg, heads * head_dim, "q_proj")(x, deterministic).reshape(b, t, heads, head_dim)
        k = _dense(cfg, kv_heads * head_dim, "k_proj")(x, deterministic).reshape(b, t, kv_heads, head_dim)
        v = _dense(cfg, kv_heads * head_dim, "v_proj")(x, deterministic).reshape(b, t, kv_heads, head_dim)
        q = apply_rope(RMSNorm(cfg.rms_norm_eps, dtype, name="q_norm")(q), cos, sin)
        k = apply_rope(RMSNorm(cfg.rms_norm_eps, dtype, name="k_norm")(k), cos, sin)

        # Query head n uses key/value head n // (heads / kv_heads) (transformers' repeat_kv).
        probs_dropout = None
        if not deterministic and cfg.attention_dropout > 0:
            drop = Dropout(cfg.attention_dropout)
            probs_dropout = lambda probs: drop(probs, deterministic=False)  # noqa: E731
        context = attention(
            q, k.astype(dtype), v.astype(dtype), allowed, causal=True, impl=cfg.attention_impl,
            probs_dropout=probs_dropout,
        )
        context = context.reshape(b, t, heads * head_dim)
        return _dense(cfg, cfg.hidden_size, "o_proj")(context, deterministic)


class Qwen3MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        gate = _dense(cfg, cfg.intermediate_size, "gate_proj")(x, deterministic)
        up = _dense(cfg, cfg.intermediate_size, "up_proj")(x, deterministic)
        return _dense(cfg, cfg.hidden_size, "down_proj")(nn.silu(gate) * up, deterministic)


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, allowed: jax.Array, cos: jax.Array, sin: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.cfg
        dtype = compute_dtype(cfg)
        h = RMSNorm(cfg.rms_norm_eps, dtype, name="input_layernorm")(x)
        h = Qwen3Attention(cfg, name="self_attn")(h, allowed, cos, sin, deterministic)
        x = x + Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = RMSNorm(cfg.rms_norm_eps, dtype, name="post_attention_layernorm")(x)
        h = Qwen3MLP(cfg, name="mlp")(h, deterministic)
        return x + Dropout(cfg.dropout)(h, deterministic=deterministic)


class Qwen3Encoder(nn.Module):
    """input_ids, segment ids [B, T] -> pooled float32 embeddings [B, D] (token states on request;
    `num_segments=S`: every segment's embedding, [B, S, D], zeros for absent segments).

    Param tree: embed_tokens/embedding, layers_{i}/{input_layernorm, self_attn/{q,k,v,o}_proj,
    self_attn/{q,k}_norm, post_attention_layernorm, mlp/{gate,up,down}_proj}, norm/scale.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        deterministic: bool = True,
        return_token_states: bool = False,
        num_segments: int | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        validate_qwen3_config(cfg)
        dtype = compute_dtype(cfg)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(stddev=0.02),
            name="embed_tokens",
        )
        x = embed(input_ids)
        positions = segment_positions(attention_mask)
        cos, sin = rope_cos_sin(positions, qwen3_head_dim(cfg), cfg.rope_theta)
        allowed = segment_attention_mask(attention_mask)  # causality is added by the attention
        names = [f"layers_{i}" for i in range(cfg.num_hidden_layers)]
        x = run_layers(self, Qwen3DecoderLayer, cfg, names, x, (allowed, cos, sin), deterministic)
        x = RMSNorm(cfg.rms_norm_eps, dtype, name="norm")(x)
        if return_token_states:
            return x.astype(jnp.float32)
        return pool(x, attention_mask, cfg.pooling, cfg.normalize, num_segments)

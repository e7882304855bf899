"""BERT-family encoder in Flax (all-MiniLM, BGE/E5/GTE-style BERT checkpoints).

Absolute positions, token types, post-LayerNorm blocks, GELU. Params are float32; `cfg.dtype` is
the compute dtype (softmax, LayerNorm statistics and pooling stay float32). Submodule names mirror
the Hugging Face names so the weight map in boom_jax/hf/bert_weights.py stays one rule per tensor.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from boom_jax.models.attention import attention
from boom_jax.models.config import ModelConfig
from boom_jax.models.dropout import Dropout
from boom_jax.models.layer_stack import run_layers
from boom_jax.models.pooling import pool
from boom_jax.models.segments import segment_attention_mask, segment_positions

ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


def activation(name: str):
    """The activation function called `name` in an HF config (hidden_act)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _dense(cfg: ModelConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=compute_dtype(cfg), param_dtype=jnp.float32, name=name)


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=compute_dtype(cfg), param_dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, LayerNorm, dropout (positions [B, T] given)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, positions: jax.Array, deterministic: bool
    ) -> jax.Array:
        cfg = self.cfg
        embed = functools.partial(nn.Embed, features=cfg.hidden_size, dtype=compute_dtype(cfg), param_dtype=jnp.float32)
        x = (
            embed(cfg.vocab_size, name="word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, name="position_embeddings")(positions)
            + embed(cfg.type_vocab_size, name="token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(cfg, "LayerNorm")(x)
        return Dropout(cfg.dropout)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head attention context (HF "attention.self"); `allowed` bool [B, T, T] (attention.py)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        b, t, _ = x.shape

        def split(y):
            return y.reshape(b, t, heads, head_dim)

        q = split(_dense(cfg, cfg.hidden_size, "query")(x))
        k = split(_dense(cfg, cfg.hidden_size, "key")(x))
        v = split(_dense(cfg, cfg.hidden_size, "value")(x))
        probs_dropout = None
        if not deterministic and cfg.attention_dropout > 0:
            drop = Dropout(cfg.attention_dropout)
            probs_dropout = lambda probs: drop(probs, deterministic=False)  # noqa: E731
        context = attention(q, k, v, allowed, causal=False, impl=cfg.attention_impl, probs_dropout=probs_dropout)
        return context.reshape(b, t, cfg.hidden_size)


class BertResidualOutput(nn.Module):
    """Dense, dropout, residual add, LayerNorm (HF "attention.output" and "output")."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        y = _dense(self.cfg, self.cfg.hidden_size, "dense")(x)
        y = Dropout(self.cfg.dropout)(y, deterministic=deterministic)
        return _layer_norm(self.cfg, "LayerNorm")(y + residual)


class BertAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, deterministic: bool) -> jax.Array:
        context = BertSelfAttention(self.cfg, name="self")(x, allowed, deterministic)
        return BertResidualOutput(self.cfg, name="output")(context, x, deterministic)


class BertIntermediate(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return activation(self.cfg.hidden_act)(_dense(self.cfg, self.cfg.intermediate_size, "dense")(x))


class BertLayer(nn.Module):
    """One post-LN transformer block."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, deterministic: bool) -> jax.Array:
        x = BertAttention(self.cfg, name="attention")(x, allowed, deterministic)
        h = BertIntermediate(self.cfg, name="intermediate")(x)
        return BertResidualOutput(self.cfg, name="output")(h, x, deterministic)


class BertStack(nn.Module):
    """The layers `layer_{i}`, under a scan and rematerialized per cfg (layer_stack.run_layers)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, allowed: jax.Array, deterministic: bool) -> jax.Array:
        names = [f"layer_{i}" for i in range(self.cfg.num_hidden_layers)]
        return run_layers(self, BertLayer, self.cfg, names, x, (allowed,), deterministic)


class BertEncoder(nn.Module):
    """input_ids, segment ids [B, T] -> pooled float32 embeddings [B, D] (token states on request).

    The second input is read as segment ids (0 = padding, 1..S = the texts packed in a row; a 0/1
    attention mask is the one-text case, see segments.py): attention stays within a segment and
    absolute positions restart at 0 at each segment's first token. `num_segments=S` returns every
    segment's embedding, float32 [B, S, D] (zeros for absent segments); None pools the tokens > 0 of
    each row as one text, [B, D].

    The HF pooler (dense + tanh on [CLS]) is not used for embeddings; its params are created at init
    (when cfg.has_pooler) so that exported checkpoints load into transformers' BertModel complete.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        deterministic: bool = True,
        token_type_ids: jax.Array | None = None,
        return_token_states: bool = False,
        num_segments: int | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        positions = segment_positions(attention_mask)
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, positions, deterministic)
        allowed = segment_attention_mask(attention_mask)
        x = BertStack(cfg, name="encoder")(x, allowed, deterministic)
        if cfg.has_pooler and self.is_initializing():
            nn.tanh(_dense(cfg, cfg.hidden_size, "pooler")(x[:, 0]))
        if return_token_states:
            return x.astype(jnp.float32)
        return pool(x, attention_mask, cfg.pooling, cfg.normalize, num_segments)

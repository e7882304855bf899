"""Analytic memory and FLOPs of one train step on one device, for targets that cannot be compiled here.

A GPU has no ahead-of-time compile target on a CPU-only host, and XLA:CPU's buffer assignment is not
the GPU's (it keeps float32 copies of bfloat16 tensors, and does not honour remat of an unrolled
stack), so the dry run prints this count beside XLA's figure. The terms, per device:

- params, optimizer state, batch: exact shard sizes (given by the caller from the shardings);
- gradients: float32, shaped and sharded like the trainable params;
- weight copies: the embedding table and one layer's kernels cast to ``cfg.dtype``; under the layer
  scan (remat always scans) the stacked kernels in the compute dtype and their gradients;
- saved activations: what the forward keeps for the backward. With ``remat`` each layer keeps its
  input (``tokens x hidden``, compute dtype), plus the projection outputs or the attention matmuls
  under the dots policies (:func:`remat_saved_bytes`); without it every layer keeps its working set
  (:func:`layer_saved_bytes`). Queries and passages are embedded by separate calls and both are kept;
  with the gradient cache only one chunk's are (the chunk is re-embedded under the gradient);
- the largest transient: one layer's backward (:func:`layer_backward_bytes`, for the larger side or
  chunk), or the loss over the global batch.

The peak is their sum. Attention: with ``flash_attention`` (cuDNN on a GPU) no [B, heads, T, T]
tensor exists; otherwise (XLA's path, TPU and CPU) the float32 scores and the probabilities are
materialized per layer. FLOPs (:func:`step_flops`) count matmuls: forward, remat recompute, backward
(input gradients always, weight gradients for trained weights, LoRA adapters both) and the gradient
cache's extra forward.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from boom_jax.models.config import ModelConfig
from boom_jax.models.lora import lora_module_names
from boom_jax.models.registry import get_arch

F32 = 4


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """Per-device sequences and lengths of one train step (the batch is split over the devices).

    ``chunk_queries``: queries per gradient-cache chunk on this device (0 = no gradient cache);
    ``global_queries`` / ``global_passages``: the contrastive batch the loss sees (all devices)."""

    queries: int
    query_len: int
    passages: int
    passage_len: int
    global_queries: int
    global_passages: int
    chunk_queries: int = 0

    @property
    def group(self) -> int:
        return self.passages // max(self.queries, 1)

    def sides(self) -> list[tuple[int, int]]:
        """(sequences, length) of each embedding call whose activations coexist in the backward:
        queries and passages, or one gradient-cache chunk of each."""
        if self.chunk_queries:
            return [(self.chunk_queries, self.query_len), (self.chunk_queries * self.group, self.passage_len)]
        return [(self.queries, self.query_len), (self.passages, self.passage_len)]

    @property
    def tokens(self) -> int:
        return self.queries * self.query_len + self.passages * self.passage_len


@dataclasses.dataclass(frozen=True)
class Term:
    """One line of the memory count: ``key`` (stable name), ``label``, ``bytes`` and how to lower it."""

    key: str
    label: str
    bytes: int
    lower_with: str = ""


def scanned(cfg: ModelConfig) -> bool:
    """Whether the layers run under a scan (remat always scans; models/layer_stack.py)."""
    return bool(cfg.remat or getattr(cfg, "scan_layers", False))


def compute_bytes(cfg: ModelConfig) -> int:
    return 2 if cfg.dtype == "bfloat16" else 4


def _dims(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, heads, query width heads*head_dim, key/value width)."""
    heads = cfg.num_attention_heads
    if get_arch(cfg.arch).grouped_query_attention:
        head_dim = cfg.head_dim or cfg.hidden_size // heads
        kv = cfg.num_key_value_heads or heads
        return cfg.hidden_size, cfg.intermediate_size, heads, heads * head_dim, kv * head_dim
    return cfg.hidden_size, cfg.intermediate_size, heads, cfg.hidden_size, cfg.hidden_size


def _per_token_saved(cfg: ModelConfig) -> int:
    """Elements per token (besides the attention probabilities) one layer keeps for its backward."""
    h, i, _, qw, kvw = _dims(cfg)
    spec = get_arch(cfg.arch)
    # Pre-norm (Qwen3): x, norm1(x), x + attn, norm2. Post-norm (BERT): x, attention output,
    # LayerNorm in/out, MLP output and LayerNorm in (q width = hidden there).
    stream = 4 * h if spec.pre_norm else 5 * h
    # q (before and after q/k norm + rope when the arch has them) and the context; k likewise, v.
    qk = 2 if spec.qk_norm else 1
    attention = (qk + 1) * qw + (qk + 1) * kvw
    # Gated MLP: gate, up, silu(gate) * up; else the pre- and post-GELU intermediate.
    mlp = 3 * i if spec.gated_mlp else 2 * i
    return stream + attention + mlp


def _per_token_dots(cfg: ModelConfig) -> int:
    """Elements per token of one layer's projection outputs (matmuls without batch dimensions)."""
    h, i, _, qw, kvw = _dims(cfg)
    return qw + 2 * kvw + h + (2 * i + h if get_arch(cfg.arch).gated_mlp else i + h)


def layer_saved_bytes(cfg: ModelConfig, sequences: int, length: int, flash: bool = False) -> int:
    """Bytes one layer keeps for its backward without remat: per-token tensors in the compute dtype,
    plus the attention probabilities [sequences, heads, length, length] in float32 and compute dtype
    (a flash kernel keeps two float32 softmax statistics per head and token instead)."""
    heads = _dims(cfg)[2]
    dt = compute_bytes(cfg)
    tokens = sequences * length
    probs = tokens * heads * 2 * F32 if flash else sequences * heads * length * length * (F32 + dt)
    return tokens * _per_token_saved(cfg) * dt + probs


def remat_saved_bytes(cfg: ModelConfig, sequences: int, length: int, flash: bool = False) -> int:
    """Bytes one layer keeps under remat with cfg.remat_policy: its input, plus the projection outputs
    ("dots_with_no_batch_dims_saveable"), plus the attention matmuls' outputs ("dots_saveable")."""
    _, _, heads, qw, _ = _dims(cfg)
    dt = compute_bytes(cfg)
    tokens = sequences * length
    saved = tokens * cfg.hidden_size * dt
    policy = getattr(cfg, "remat_policy", "nothing_saveable")
    if policy in ("dots_with_no_batch_dims_saveable", "dots_saveable"):
        saved += tokens * _per_token_dots(cfg) * dt
    if policy == "dots_saveable" and not flash:
        saved += sequences * heads * length * length * F32 + tokens * qw * dt
    return saved


def layer_backward_bytes(cfg: ModelConfig, sequences: int, length: int, flash: bool = False) -> int:
    """Bytes live while one layer's backward runs besides what the forward saved: with remat the
    layer's recomputed working set; the gradients of its per-token tensors; with materialized
    attention the gradients of the probabilities (compute dtype) and of the scores (float32)."""
    heads = _dims(cfg)[2]
    dt = compute_bytes(cfg)
    tokens = sequences * length
    recomputed = layer_saved_bytes(cfg, sequences, length, flash) if cfg.remat else 0
    grads = tokens * _per_token_saved(cfg) * dt
    scores = 0 if flash else sequences * heads * length * length * (F32 + dt)
    return recomputed + grads + scores


def step_memory(
    cfg: ModelConfig,
    shapes: StepShapes,
    *,
    param_bytes: int,
    opt_state_bytes: int,
    grad_bytes: int,
    batch_bytes: int,
    embedding_bytes: int,
    flash_attention: bool = False,
) -> list[Term]:
    """The memory terms of one step on one device (see the module docstring); the last is the peak.

    ``param_bytes`` / ``opt_state_bytes`` / ``batch_bytes``: this device's shards; ``grad_bytes``: its
    float32 trainable params; ``embedding_bytes``: its float32 shard of the embedding table;
    ``flash_attention``: the target's attention never writes the [B, heads, T, T] scores (cuDNN)."""
    dt = compute_bytes(cfg)
    h = cfg.hidden_size
    layers = max(cfg.num_hidden_layers, 1)
    sides = shapes.sides()
    flash = flash_attention
    if cfg.remat:
        saved = sum(layers * remat_saved_bytes(cfg, n, t, flash) for n, t in sides)
    else:
        saved = sum(layers * layer_saved_bytes(cfg, n, t, flash) for n, t in sides)
    # Masks [n, T, T] (bool; an additive bias in the compute dtype for a flash kernel) and the final
    # states before pooling, per side.
    saved += sum(n * t * t * (1 + (dt if flash else 0)) + n * t * h * dt for n, t in sides)
    if shapes.chunk_queries:  # the cached embeddings of the whole batch and their gradients
        saved += 2 * (shapes.queries + shapes.passages) * h * F32
    layer_params = (param_bytes - embedding_bytes) // layers
    # The compute-dtype casts of the embedding table and of the layer being run.
    copies = (embedding_bytes + layer_params) * dt // F32 if dt != F32 else 0
    if scanned(cfg):
        # The layers' kernels stacked for the scan (cast to the compute dtype) and their gradients
        # before they are unstacked (layer_stack.py; frozen layers under LoRA get no gradient).
        layer_bytes = (param_bytes - embedding_bytes) * dt // F32
        trained = min(grad_bytes, param_bytes - embedding_bytes) * dt // F32
        copies += layer_bytes + trained
    backward = max(layer_backward_bytes(cfg, n, t, flash) for n, t in sides)
    loss = 3 * shapes.global_queries * shapes.global_passages * F32
    remat_key = "train.grad_cache_chunk" if cfg.remat else "model.remat=True"
    chunk_hint = "train.grad_cache_chunk (fewer sequences per chunk)"
    stack = scanned(cfg)
    terms = [
        Term("params", "params (float32)", param_bytes, "mesh.fsdp"),
        Term("opt_state", "optimizer state", opt_state_bytes, "mesh.fsdp"),
        Term("batch", "batch", batch_bytes, "train.batch_size"),
        Term("gradients", "gradients (float32)", grad_bytes, "mesh.fsdp"),
        Term("copies", "weight copies (" + ", ".join(
            ([f"{cfg.dtype} casts"] if dt != F32 else []) + (["scan stacking"] if stack else [])) + ")"
             if (dt != F32 or stack) else "weight copies", copies, "mesh.fsdp"),
        Term("activations", "saved activations" + (f" (remat {getattr(cfg, 'remat_policy', 'nothing_saveable')})"
                                                   if cfg.remat else " (no remat)"), saved, remat_key),
        Term("transient", "largest transient: one layer's backward" if backward >= loss
             else "largest transient: the loss", max(backward, loss),
             chunk_hint if backward >= loss else "train.batch_size"),
    ]
    terms.append(Term("peak", "peak (analytic)", sum(t.bytes for t in terms)))
    return terms


def dominant(terms: Sequence[Term]) -> Term:
    """The largest term other than the peak."""
    return max((t for t in terms if t.key != "peak"), key=lambda t: t.bytes)


def layer_matmul_flops(cfg: ModelConfig, sequences: int, length: int) -> tuple[float, float, float]:
    """(weight, attention, last-projection) matmul FLOPs of one layer's forward over sequences x length.

    The last projection (Qwen3's down_proj, whose output only feeds the residual add) is not
    recomputed under remat: nothing in the backward needs its output."""
    h, i, _, qw, kvw = _dims(cfg)
    spec = get_arch(cfg.arch)
    mlp = (3 if spec.gated_mlp else 2) * h * i
    tokens = sequences * length
    weights = 2.0 * tokens * (h * qw + 2 * h * kvw + qw * h + mlp)
    attention = 2.0 * 2 * sequences * length * length * qw  # scores and context, all T x T computed
    # Pre-norm: the MLP's last projection only feeds the residual add (post-norm: a LayerNorm needs it).
    last = 2.0 * tokens * i * h if spec.pre_norm else 0.0
    return weights, attention, last


def lora_matmul_flops(cfg: ModelConfig, sequences: int, length: int) -> float:
    """Forward FLOPs of one layer's LoRA adapters (x @ A [in, r], then @ B [r, out]) over sequences x length."""
    if cfg.lora_rank <= 0 or get_arch(cfg.arch).encoder_only:
        return 0.0

    h, i, _, qw, kvw = _dims(cfg)
    shapes = {"q_proj": (h, qw), "k_proj": (h, kvw), "v_proj": (h, kvw), "o_proj": (qw, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    widths = sum(a + b for name, (a, b) in shapes.items() if name in lora_module_names(cfg.lora_targets))
    return 2.0 * sequences * length * cfg.lora_rank * widths


def step_flops(cfg: ModelConfig, queries: int, query_len: int, passages: int, passage_len: int,
               trainable_weights: bool = True, grad_cache: bool = False) -> float:
    """Matmul FLOPs of one train step over these (global) sequences: forward, remat recompute,
    backward (weight gradients only when ``trainable_weights``; under LoRA the frozen kernels pass
    gradients through only, the adapters get both), the gradient cache's extra no-gradient forward,
    and the loss."""
    total = 0.0
    for n, t in ((queries, query_len), (passages, passage_len)):
        w, a, last = layer_matmul_flops(cfg, n, t)
        lora = lora_matmul_flops(cfg, n, t)
        forward = cfg.num_hidden_layers * (w + a + lora)
        recompute = cfg.num_hidden_layers * (w + a + lora - last) if cfg.remat else 0.0
        backward = cfg.num_hidden_layers * ((2 * w if trainable_weights else w) + 2 * a + 2 * lora)
        total += forward * (1 + int(grad_cache)) + recompute + backward
    loss = 2.0 * queries * passages * cfg.hidden_size * 3
    return total + loss


__all__ = ["StepShapes", "Term", "dominant", "layer_backward_bytes", "layer_matmul_flops", "layer_saved_bytes",
           "remat_saved_bytes", "step_flops", "step_memory"]

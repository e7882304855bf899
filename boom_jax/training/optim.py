"""AdamW with warmup + linear/cosine decay, global-norm clipping, a trainable-leaf mask and no weight
decay on biases and norms."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from boom_jax.training.sharding import path_string

PathPredicate = Callable[[str], bool]
"""Takes a "/"-joined parameter path such as "encoder/layer_0/attention/self/query/kernel"."""

DECAY_SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "linear",
    end_factor: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then ``decay`` to
    ``end_factor * learning_rate`` at ``total_steps`` ("constant" keeps the peak)."""
    if decay not in DECAY_SCHEDULES:
        raise ValueError(f"optimizer.decay={decay!r}: expected one of {DECAY_SCHEDULES}")
    if total_steps <= 0:
        raise ValueError(f"optimizer.total_steps={total_steps} must be positive")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"optimizer.warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    decay_steps = max(total_steps - warmup_steps, 1)
    end_value = learning_rate * end_factor
    if decay == "linear":
        after = optax.linear_schedule(learning_rate, end_value, decay_steps)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_factor)
    else:
        after = optax.constant_schedule(learning_rate)
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def default_weight_decay_predicate(path: str, ndim: int) -> bool:
    """Decay matrices (kernels, embeddings); not biases, norm scales or other vectors."""
    leaf = path.rsplit("/", 1)[-1]
    lowered = path.lower()
    return ndim >= 2 and leaf != "bias" and "norm" not in lowered


def _path_labels(params: Any, fn: Callable[[str, Any], Any]) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_string(p), x), params)


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "linear",
    end_factor: float = 0.0,
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    trainable: PathPredicate | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule). ``trainable(path)`` selects the trained leaves (e.g. LoRA's
    ``is_lora_leaf``); the others get zero updates and no Adam moments. ``clip_norm`` None = no clipping.
    The global norm for clipping is over the trainable leaves only.
    """
    schedule = make_schedule(learning_rate, total_steps, warmup_steps, decay, end_factor)
    decay_mask = lambda params: _path_labels(  # noqa: E731
        params, lambda path, x: default_weight_decay_predicate(path, x.ndim)
    )
    parts = []
    if clip_norm is not None:
        if clip_norm <= 0:
            raise ValueError(f"optimizer.clip_norm={clip_norm} must be positive (or None to disable)")
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    optimizer = optax.chain(*parts)
    if trainable is not None:
        labels = lambda params: _path_labels(  # noqa: E731
            params, lambda path, _: "trainable" if trainable(path) else "frozen"
        )
        optimizer = optax.multi_transform(
            {"trainable": optimizer, "frozen": optax.set_to_zero()}, labels
        )
    return optimizer, schedule

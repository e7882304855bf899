"""AdamW with warmup + linear/cosine decay, global-norm clipping, a trainable-leaf mask and no weight
decay on biases and norms.

The learning-rate schedule's numbers (peak, end, warmup and total steps) live in the optimizer STATE,
not in the compiled program: runs that differ only in their length or learning rate (bag members,
the runs of an experiment) compile to the same XLA program, so the persistent compilation cache
serves every run after the first.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from boom_jax.tree_paths import map_with_path_strings

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


class ScheduleState(NamedTuple):
    """Update count and the schedule's numbers (arrays, so they are data of the compiled step)."""

    count: jax.Array  # int32, updates applied so far
    peak: jax.Array  # float32
    end: jax.Array  # float32, peak * end_factor
    span: jax.Array  # float32, peak - end (computed in float64, as optax does)
    alpha: jax.Array  # float32, end_factor (cosine)
    warmup: jax.Array  # int32
    total: jax.Array  # int32


def schedule_value(decay: str, state: ScheduleState) -> jax.Array:
    """The learning rate at ``state.count``: the same arithmetic as ``make_schedule``'s optax schedule."""
    count = state.count.astype(jnp.float32)
    warmup = state.warmup.astype(jnp.float32)
    decay_steps = jnp.maximum(state.total - state.warmup, 1).astype(jnp.float32)
    after_count = count - warmup
    if decay == "linear":
        c = jnp.clip(after_count, 0.0, decay_steps)
        after = state.span * (1 - c / decay_steps) + state.end
    elif decay == "cosine":
        c = jnp.minimum(after_count, decay_steps)
        after = state.peak * ((1 - state.alpha) * (0.5 * (1 + jnp.cos(jnp.pi * c / decay_steps))) + state.alpha)
    elif decay == "constant":
        after = state.peak
    else:
        raise ValueError(f"optimizer.decay={decay!r}: expected one of {DECAY_SCHEDULES}")
    safe_warmup = jnp.maximum(warmup, 1.0)
    warm = (0.0 - state.peak) * (1 - jnp.clip(count, 0.0, safe_warmup) / safe_warmup) + state.peak
    return jnp.where((state.warmup > 0) & (count < warmup), warm, after).astype(jnp.float32)


def scale_by_state_schedule(
    learning_rate: float, total_steps: int, warmup_steps: int = 0, decay: str = "linear", end_factor: float = 0.0
) -> optax.GradientTransformation:
    """``updates * -lr(count)`` with the schedule's numbers kept in the state (see the module docstring)."""
    make_schedule(learning_rate, total_steps, warmup_steps, decay, end_factor)  # validates the arguments

    def init_fn(params):
        del params
        return ScheduleState(count=jnp.zeros((), jnp.int32), peak=jnp.asarray(learning_rate, jnp.float32),
                             end=jnp.asarray(learning_rate * end_factor, jnp.float32),
                             span=jnp.asarray(learning_rate - learning_rate * end_factor, jnp.float32),
                             alpha=jnp.asarray(end_factor, jnp.float32),
                             warmup=jnp.asarray(warmup_steps, jnp.int32), total=jnp.asarray(total_steps, jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        lr = schedule_value(decay, state)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, state._replace(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def default_weight_decay_predicate(path: str, ndim: int) -> bool:
    """Decay matrices (kernels, embeddings); not biases, norm scales or other vectors."""
    leaf = path.rsplit("/", 1)[-1]
    lowered = path.lower()
    return ndim >= 2 and leaf != "bias" and "norm" not in lowered


def _path_labels(params: Any, fn: Callable[[str, Any], Any]) -> Any:
    return map_with_path_strings(fn, params)


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
    parts += [optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
              optax.add_decayed_weights(weight_decay, decay_mask),
              scale_by_state_schedule(learning_rate, total_steps, warmup_steps, decay, end_factor)]
    optimizer = optax.chain(*parts)
    if trainable is not None:
        labels = lambda params: _path_labels(  # noqa: E731
            params, lambda path, _: "trainable" if trainable(path) else "frozen"
        )
        optimizer = optax.multi_transform(
            {"trainable": optimizer, "frozen": optax.set_to_zero()}, labels
        )
    return optimizer, schedule

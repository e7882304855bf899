"""The learning-rate schedule held in the optimizer state: same values as optax, same program for any run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from boom_jax.training.optim import make_optimizer, make_schedule, scale_by_state_schedule, schedule_value

CASES = [(5e-5, 100, 10, 0.0), (1e-3, 7, 0, 0.1), (2e-5, 33, 3, 0.2), (1.0, 1, 0, 0.0)]


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_state_schedule_equals_the_optax_schedule(decay):
    value = jax.jit(lambda s: schedule_value(decay, s))
    for lr, total, warmup, end_factor in CASES:
        reference = make_schedule(lr, total, warmup, decay, end_factor)
        state = scale_by_state_schedule(lr, total, warmup, decay, end_factor).init(None)
        counts = np.arange(total + 4)
        ours = np.array([float(value(state._replace(count=jnp.asarray(c, jnp.int32)))) for c in counts])
        np.testing.assert_allclose(ours, [float(reference(int(c))) for c in counts], rtol=1e-6, atol=1e-12)


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
            "LayerNorm": {"scale": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}}


def test_optimizer_equals_optax_adamw_with_the_schedule():
    lr, total, warmup = 1e-2, 6, 2
    ours, _ = make_optimizer(lr, total, warmup_steps=warmup, weight_decay=0.1, clip_norm=1.0)
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731 (kernels decay, vectors not)
    reference = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(make_schedule(lr, total, warmup), weight_decay=0.1, mask=mask))
    params_a = params_b = _tree(0)
    state_a, state_b = ours.init(params_a), reference.init(params_b)
    for step in range(total):
        grads = _tree(step + 1)
        updates_a, state_a = jax.jit(ours.update)(grads, state_a, params_a)
        updates_b, state_b = jax.jit(reference.update)(grads, state_b, params_b)
        params_a, params_b = optax.apply_updates(params_a, updates_a), optax.apply_updates(params_b, updates_b)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_runs_of_different_length_and_lr_compile_to_the_same_program():
    """What lets the persistent compilation cache serve every bag member after the first."""
    params = _tree(0)

    def program(lr, total, warmup):
        optimizer, _ = make_optimizer(lr, total, warmup_steps=warmup)
        return jax.jit(optimizer.update).lower(params, optimizer.init(params), params).as_text()

    assert program(5e-5, 60, 6) == program(2e-5, 12, 1)
    other = _tree(1)
    other["dense"]["kernel"] = jnp.zeros((5, 3), jnp.float32)  # another shape: another program
    optimizer, _ = make_optimizer(5e-5, 60, warmup_steps=6)
    assert jax.jit(optimizer.update).lower(other, optimizer.init(other), other).as_text() != program(5e-5, 60, 6)


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="warmup_steps"):
        scale_by_state_schedule(1e-3, total_steps=5, warmup_steps=9)
    with pytest.raises(ValueError, match="optimizer.decay"):
        scale_by_state_schedule(1e-3, total_steps=5, decay="exp")

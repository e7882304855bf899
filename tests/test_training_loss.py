"""InfoNCE: NumPy reference, no-in-batch mode, cross-device negatives on the fake 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.training.loss import info_nce, info_nce_per_query

B, G, D = 16, 4, 8  # 16 queries, each with 1 positive + 3 hard negatives
TEMPERATURE = 0.05


def _numpy_info_nce(q, p, temperature, in_batch_negatives):
    """Plain loop reference: cross-entropy of each query against its candidates, label = its positive."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    g = p.shape[0] // q.shape[0]
    losses = []
    for i in range(q.shape[0]):
        if in_batch_negatives:
            candidates = pn  # every passage of the batch; the positive sits at column i * g
            label = i * g
        else:
            candidates = pn[i * g : (i + 1) * g]  # only its own group; the positive is first
            label = 0
        logits = candidates @ qn[i] / temperature
        logits = logits.astype(np.float64)
        log_norm = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        losses.append(log_norm - logits[label])
    return np.mean(losses)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, D)).astype(np.float32)
    p = rng.normal(size=(B * G, D)).astype(np.float32)
    p[::G] += 0.5 * q  # positives correlate with their queries, so the loss is not trivially uniform
    w = rng.normal(size=(D, D)).astype(np.float32) / np.sqrt(D)
    return q, p, w


@pytest.mark.parametrize("in_batch", [True, False])
def test_info_nce_matches_numpy(data, in_batch):
    q, p, _ = data
    got = float(info_nce(jnp.asarray(q), jnp.asarray(p), TEMPERATURE, in_batch))
    want = _numpy_info_nce(q, p, TEMPERATURE, in_batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_per_query_mode_mask_mixes_modes(data):
    q, p, _ = data
    flags = np.arange(B) % 2 == 0
    per_query = np.asarray(info_nce_per_query(jnp.asarray(q), jnp.asarray(p), TEMPERATURE, flags))
    full = np.asarray(info_nce_per_query(jnp.asarray(q), jnp.asarray(p), TEMPERATURE, True))
    group = np.asarray(info_nce_per_query(jnp.asarray(q), jnp.asarray(p), TEMPERATURE, False))
    np.testing.assert_allclose(per_query, np.where(flags, full, group), rtol=1e-6)
    assert np.all(group < full)  # fewer negatives -> strictly smaller loss


def test_bad_shapes_are_rejected(data):
    q, p, _ = data
    with pytest.raises(ValueError, match="multiple of queries"):
        info_nce(jnp.asarray(q), jnp.asarray(p[:-1]), TEMPERATURE)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(jnp.asarray(q), jnp.asarray(p), 0.0)


@pytest.mark.parametrize("in_batch", [True, False])
def test_cross_device_loss_and_grads_equal_single_device(data, in_batch):
    """Sharded over 8 devices (data=4 x fsdp=2), with hard negatives: same loss and same gradients."""
    q, p, w = data
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    axes = ("data", "fsdp")

    def loss(w, q, p, axis_name=None):
        return info_nce(q @ w, p @ w, TEMPERATURE, in_batch, axis_name)

    want_loss, want_grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(w, q, p)

    sharded = jax.jit(
        jax.shard_map(
            lambda w, q, p: jax.value_and_grad(loss, argnums=(0, 1, 2))(w, q, p, axes),
            mesh=mesh,
            in_specs=(P(), P(axes), P(axes)),
            out_specs=(P(), (P(), P(axes), P(axes))),
        )
    )
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    got_loss, got_grads = sharded(put(w, P()), put(q, P(axes)), put(p, P(axes)))

    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # The gathered label must point at each query's positive: putting the positive on a hard
    # negative's column changes the loss, so the equality above would fail with wrong labels.
    p_swapped = p.copy()
    p_swapped[::G], p_swapped[1::G] = p[1::G], p[::G]
    assert abs(float(loss(w, q, p_swapped)) - float(want_loss)) > 1e-3

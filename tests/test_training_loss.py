"""The loss registry against NumPy transcriptions: InfoNCE (no-in-batch mode, fake-negative mask,
query-query / passage-passage / passage-query negatives, duplicate masks), FlagEmbedding's kd term,
MarginMSE, Matryoshka; every term at once under cross-device negatives on the fake 8-device mesh and
under the gradient cache; config errors name config.loss.*."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.training.grad_cache import chunked_value_and_grad, grad_cache_value_and_grad
from boom_jax.training.loss import (
    LossInputs,
    LossSpec,
    combined_loss,
    info_nce,
    info_nce_per_query,
    loss_spec_from_config,
    loss_terms,
)

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


# ---- the loss registry: each term against a NumPy transcription ----------------------------------


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lse(x):
    x = np.asarray(x, np.float64)
    return np.log(np.sum(np.exp(x - x.max()))) + x.max()


def _numpy_extended_info_nce(q, p, t, in_batch, margin=None, qq=False, pp=False, pq=False,
                             false_neg=None, dup_q=None):
    """Loop transcription: for each query, the candidate list the InfoNCE denominator holds."""
    qn, pn = _unit(q.astype(np.float64)), _unit(p.astype(np.float64))
    b, g = q.shape[0], p.shape[0] // q.shape[0]
    in_batch = np.broadcast_to(in_batch, (b,))
    false_neg = np.zeros((b, b * g), bool) if false_neg is None else false_neg
    dup_q = np.zeros((b, b), bool) if dup_q is None else dup_q
    losses = []
    for i in range(b):
        pos = qn[i] @ pn[i * g]
        fake = lambda c: margin is not None and c > pos + margin  # noqa: E731
        logits = [pos]
        for j in range(b * g):
            c = qn[i] @ pn[j]
            if j != i * g and (in_batch[i] or j // g == i) and not fake(c) and not false_neg[i, j]:
                logits.append(c)
        for j in range(b):
            if j == i or not in_batch[i] or dup_q[i, j]:
                continue
            if qq and not fake(qn[i] @ qn[j]):
                logits.append(qn[i] @ qn[j])
            if pq and not fake(pn[i * g] @ qn[j]):
                logits.append(pn[i * g] @ qn[j])
        if pp and in_batch[i]:
            for j in range(b * g):
                c = pn[i * g] @ pn[j]
                if j != i * g and not fake(c) and not false_neg[i, j]:
                    logits.append(c)
        losses.append(_lse(np.asarray(logits) / t) - pos / t)
    return np.mean(losses)


def _numpy_kd(q, p, t, teacher, teacher_t=1.0):
    """FlagEmbedding's kl_div: -mean_i sum_k softmax(teacher_i / T)_k * log_softmax(student_i / t)_k."""
    qn, pn = _unit(q.astype(np.float64)), _unit(p.astype(np.float64))
    b, g = q.shape[0], p.shape[0] // q.shape[0]
    out = []
    for i in range(b):
        s = pn[i * g:(i + 1) * g] @ qn[i] / t
        tt = np.asarray(teacher[i * g:(i + 1) * g], np.float64) / teacher_t
        target = np.exp(tt - _lse(tt))
        out.append(-np.sum(target * (s - _lse(s))))
    return np.mean(out)


def _numpy_margin_mse(q, p, teacher):
    """sentence-transformers' MarginMSELoss on cosines: MSE of (s_pos - s_neg_k) vs (t_pos - t_neg_k)."""
    qn, pn = _unit(q.astype(np.float64)), _unit(p.astype(np.float64))
    b, g = q.shape[0], p.shape[0] // q.shape[0]
    errs = []
    for i in range(b):
        s = pn[i * g:(i + 1) * g] @ qn[i]
        tt = teacher[i * g:(i + 1) * g]
        errs.extend(((s[0] - s[1:]) - (tt[0] - tt[1:])) ** 2)
    return np.mean(errs)


@pytest.fixture(scope="module")
def extras(data):
    q, p, _ = data
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(B * G,)).astype(np.float32) * 3
    false_neg = rng.random((B, B * G)) < 0.1
    false_neg[np.arange(B), np.arange(B) * G] = False  # never the label column
    dup_q = rng.random((B, B)) < 0.1
    dup_q[np.arange(B), np.arange(B)] = False
    return teacher, false_neg, dup_q


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("options", [
    dict(fake_negative_margin=0.05),
    dict(query_query=True, passage_passage=True),
    dict(query_query=True, passage_passage=True, passage_query=True, fake_negative_margin=0.1),
    dict(mask_duplicates=True),
])
def test_extended_info_nce_matches_numpy(data, extras, in_batch, options):
    q, p, _ = data
    _, false_neg, dup_q = extras
    spec = LossSpec(temperature=TEMPERATURE, **options)
    inputs = LossInputs(in_batch, false_negatives=false_neg, duplicate_queries=dup_q)
    got = float(combined_loss(jnp.asarray(q), jnp.asarray(p), spec, inputs))
    masks = dict(false_neg=false_neg, dup_q=dup_q) if spec.mask_duplicates else {}
    want = _numpy_extended_info_nce(q, p, TEMPERATURE, in_batch, spec.fake_negative_margin, spec.query_query,
                                    spec.passage_passage, spec.passage_query, **masks)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_defaults_equal_plain_info_nce(data):
    q, p, _ = data
    got = float(combined_loss(jnp.asarray(q), jnp.asarray(p), LossSpec(temperature=TEMPERATURE)))
    np.testing.assert_allclose(got, float(info_nce(jnp.asarray(q), jnp.asarray(p), TEMPERATURE)), rtol=1e-6)


def test_masks_change_the_loss(data, extras):
    """Each option really acts on this data (so the parity tests above are not vacuous)."""
    q, p, _ = data
    _, false_neg, dup_q = extras
    base = _numpy_extended_info_nce(q, p, TEMPERATURE, True)
    assert abs(_numpy_extended_info_nce(q, p, TEMPERATURE, True, margin=0.05) - base) > 1e-3
    assert abs(_numpy_extended_info_nce(q, p, TEMPERATURE, True, false_neg=false_neg) - base) > 1e-3
    assert abs(_numpy_extended_info_nce(q, p, TEMPERATURE, True, qq=True) - base) > 1e-3


def test_kd_and_margin_mse_match_numpy(data, extras):
    q, p, _ = data
    teacher, _, _ = extras
    spec = LossSpec(temperature=TEMPERATURE, info_nce_weight=0.5, kd_weight=2.0, teacher_temperature=0.5,
                    margin_mse_weight=3.0)
    terms = loss_terms(jnp.asarray(q), jnp.asarray(p), spec, LossInputs(True, teacher_scores=teacher))
    kd = _numpy_kd(q, p, TEMPERATURE, teacher, 0.5)
    mse = _numpy_margin_mse(q, p, teacher)
    nce = _numpy_info_nce(q, p, TEMPERATURE, True)
    np.testing.assert_allclose(float(terms["kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(float(terms["margin_mse"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]), 0.5 * nce + 2.0 * kd + 3.0 * mse, rtol=1e-5)


def test_distillation_skips_queries_without_teacher_scores(data, extras):
    q, p, _ = data
    teacher, _, _ = extras
    partial = teacher.copy()
    partial[G:2 * G] = np.nan  # query 1 has no teacher scores
    spec = LossSpec(temperature=TEMPERATURE, info_nce_weight=0.0, kd_weight=1.0)
    got = float(combined_loss(jnp.asarray(q), jnp.asarray(p), spec, LossInputs(True, teacher_scores=partial)))
    keep = np.r_[0, 2:B]
    rows = np.concatenate([np.arange(i * G, (i + 1) * G) for i in keep])
    np.testing.assert_allclose(got, _numpy_kd(q[keep], p[rows], TEMPERATURE, teacher[rows]), rtol=1e-5)
    with pytest.raises(ValueError, match="teacher scores"):
        combined_loss(jnp.asarray(q), jnp.asarray(p), spec, LossInputs(True))


def test_matryoshka_sums_truncated_renormalized_losses(data):
    q, p, _ = data
    spec = LossSpec(temperature=TEMPERATURE, matryoshka_dims=(8, 4, 2), matryoshka_weights=(1.0, 0.5, 0.25))
    got = float(combined_loss(jnp.asarray(q), jnp.asarray(p), spec))
    want = sum(w * _numpy_info_nce(q[:, :d], p[:, :d], TEMPERATURE, True) for d, w in ((8, 1), (4, .5), (2, .25)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="exceed the embedding width"):
        combined_loss(jnp.asarray(q), jnp.asarray(p), LossSpec(temperature=TEMPERATURE, matryoshka_dims=(16,)))
    with pytest.raises(ValueError, match="one weight per"):
        LossSpec(matryoshka_dims=(8, 4), matryoshka_weights=(1.0,))


def test_spec_from_config_section():
    from configs.common import base_config

    c = base_config()
    assert loss_spec_from_config(c.loss, 0.02) == LossSpec(temperature=0.02)
    c.loss.matryoshka_dims, c.loss.fake_negative_mask, c.loss.kd_weight = "384,128", True, 1.0
    spec = loss_spec_from_config(c.loss, 0.05)
    assert spec.matryoshka_dims == (384, 128) and spec.fake_negative_margin == c.loss.fake_negative_margin
    assert spec.needs_teacher_scores


ALL_ON = LossSpec(temperature=TEMPERATURE, kd_weight=0.7, margin_mse_weight=0.3, matryoshka_dims=(8, 4),
                  fake_negative_margin=0.1, query_query=True, passage_passage=True, passage_query=True)


def test_all_terms_cross_device_equal_single_device(data, extras):
    """Every term and mask at once, sharded over 8 devices: same loss and same gradients."""
    q, p, w = data
    teacher, false_neg, dup_q = extras
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    axes = ("data", "fsdp")
    flags = np.arange(B) % 3 != 0

    def loss(w, q, p, teacher, fn, dq, flags, axis_name=None):
        inputs = LossInputs(flags, teacher_scores=teacher, false_negatives=fn, duplicate_queries=dq)
        return combined_loss(q @ w, p @ w, ALL_ON, inputs, axis_name)

    args = (w, q, p, teacher, false_neg, dup_q, flags)
    want_loss, want_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
    specs = (P(), P(axes), P(axes), P(axes), P(axes), P(axes), P(axes))
    sharded = jax.jit(jax.shard_map(
        lambda *a: jax.value_and_grad(loss, argnums=(0, 1, 2))(*a, axes),
        mesh=mesh, in_specs=specs, out_specs=(P(), (P(), P(axes), P(axes)))))
    got_loss, got_grads = sharded(*(jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(args, specs)))
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)


def test_all_terms_under_the_gradient_cache(extras):
    """The grad cache's embedding-gradient pass gives the same loss and gradients as backprop."""
    teacher, false_neg, dup_q = extras
    rng = np.random.default_rng(2)
    params = {"emb": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)}
    q_ids = rng.integers(1, 32, size=(B, 5)).astype(np.int32)
    p_ids = rng.integers(1, 32, size=(B * G, 5)).astype(np.int32)
    q_mask, p_mask = np.ones_like(q_ids), np.ones_like(p_ids)

    def embed(params, ids, mask, rng):
        return jnp.sum(params["emb"][ids] * mask[..., None], axis=1)

    inputs = LossInputs(True, teacher_scores=teacher, false_negatives=false_neg, duplicate_queries=dup_q)
    loss_fn = lambda q, p: combined_loss(q, p, ALL_ON, inputs)  # noqa: E731
    both = jax.jit(lambda params: (
        grad_cache_value_and_grad(embed, loss_fn, params, q_ids, q_mask, p_ids, p_mask, None, chunk_size=4),
        chunked_value_and_grad(embed, loss_fn, params, q_ids, q_mask, p_ids, p_mask, None)))
    cached, plain = both(params)
    np.testing.assert_allclose(float(cached[0]), float(plain[0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(cached[1]["emb"]), np.asarray(plain[1]["emb"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key, value, message", [
    ("matryoshka_dims", "384,x", "config.loss.matryoshka_dims='384,x': expected comma-separated integers"),
    ("matryoshka_weights", "1,1", "one weight per dimension"),
    ("matryoshka_dims", "128,128", "config.loss.matryoshka_dims='128,128' repeats a width"),
    ("kd_weight", -1.0, "config.loss.kd_weight=-1.0 must be a finite number >= 0"),
    ("teacher_temperature", 0.0, "config.loss.teacher_temperature=0.0 must be a finite number > 0"),
    ("info_nce_weight", 0.0, "every term weight is 0"),
])
def test_bad_loss_config_names_the_key(key, value, message):
    from boom_jax.training.config_validation import ConfigError, validate_config
    from configs.common import base_config

    c = base_config()
    c.loss[key] = value
    if key == "matryoshka_weights":
        c.loss.matryoshka_dims = "384"
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(c)

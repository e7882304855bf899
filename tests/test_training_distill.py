"""Loss inputs through the batcher and the train step: teacher scores drawn with their passages,
duplicate masks, the step's loss equal to the loss registry on the embeddings, packed batches on the
8-device mesh with the gradient cache equal to padded ones with every term on, and a short
distillation run that lowers the KL divergence to the teacher."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from boom_jax.data.batcher import Batcher, choose_group, choose_passages, duplicate_masks
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.models import ModelConfig, build_model
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from boom_jax.training.model_setup import random_params
from boom_jax.training.loss import LossSpec, combined_loss
from boom_jax.training.sharding import BERT_RULES, make_mesh
from boom_jax.training.step import (
    batch_loss_inputs,
    init_train_state,
    make_train_step,
    module_embed_fn,
    prepare_batch,
    train_state_shardings,
)

B, G, MAX_LEN = 8, 3, 16
TINY = dict(arch="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, has_pooler=False, pooling="mean", normalize=True)
# every term (Matryoshka is covered under the mesh and the gradient cache in test_training_loss.py)
ALL_ON = LossSpec(temperature=0.05, kd_weight=0.5, margin_mse_weight=0.5, fake_negative_margin=0.1,
                  query_query=True, passage_passage=True, passage_query=True)


@pytest.fixture(scope="module")
def setup(minilm_path):
    """Built-in examples with teacher scores, every other one holding the next one's positive as a
    negative (a duplicate across groups), a tiny BERT and its step inputs."""
    (dataset,) = builtin_train_datasets(["debian_desc"], limit=40)
    rng = np.random.default_rng(0)
    examples = list(dataset.examples)
    for k in range(0, len(examples) - 1, 2):
        e = examples[k]
        examples[k] = dataclasses.replace(e, neg=(examples[k + 1].pos[0], *e.neg[1:]))
    examples = [dataclasses.replace(e, pos_scores=tuple(rng.normal(size=len(e.pos)) + 2.0),
                                    neg_scores=tuple(rng.normal(size=len(e.neg)))) for e in examples]
    dataset = dataclasses.replace(dataset, examples=examples)
    tok = TextTokenizer(load_tokenizer(minilm_path), MAX_LEN)
    cfg = ModelConfig(**TINY)
    embed_fn = module_embed_fn(build_model(cfg))
    embed = jax.jit(lambda params, ids, mask: embed_fn(params, ids, mask, None))
    return dataset, tok, embed_fn, random_params(cfg, seed=0), embed


def _batcher(setup, **options):
    dataset, tok = setup[:2]
    return Batcher([dataset], tok, tok, B, group_size=G, seed=1, num_epochs=None, teacher_scores=True,
                   duplicate_masks=True, show_progress=False, **options)


def test_groups_carry_their_teacher_scores(setup):
    dataset = setup[0]
    for position in range(6):
        texts, scores = choose_group(dataset, position, G - 1, np.random.default_rng(position))
        assert texts == choose_passages(dataset, position, G - 1, np.random.default_rng(position))
        e = dataset.examples[position]
        lookup = {**dict(zip(e.neg, e.neg_scores)), **dict(zip(e.pos, e.pos_scores))}
        assert scores == [lookup[t] for t in texts]
    plain = dataclasses.replace(dataset, examples=[dataclasses.replace(e, neg=()) for e in dataset.examples])
    _, scores = choose_group(plain, 0, 2, np.random.default_rng(0))
    assert np.isnan(scores[1:]).all()  # random negatives have no teacher score


def test_duplicate_masks():
    positives = [("a", "x"), ("b",), ("c",)]
    queries = ["q1", "q2", "q1"]
    passages = ["a", "b", "b", "x", "c", "a"]  # groups (positive, negative): (a, b) (b, x) (c, a)
    false_negatives, duplicate_queries = duplicate_masks(positives, queries, passages)
    np.testing.assert_array_equal(false_negatives, [[0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(duplicate_queries, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])


def _loss_and_grads(step, state, batch):
    new_state, metrics = step(state, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), jax.device_get(state["params"]),
                         jax.device_get(new_state["params"]))
    return float(metrics["loss"]), grads


def test_step_with_every_term_padded_and_packed(setup):
    """The step's loss is the registry's loss on the batch's embeddings; the packed batch on the
    8-device mesh (4 batch shards, gradient cache of 2 chunks) gives the same loss and gradients."""
    _, _, embed_fn, params, embed = setup
    batch = next(_batcher(setup))
    assert batch["false_negatives"].shape == (B, B * G) and batch["teacher_scores"].shape == (B * G,)
    optimizer = optax.sgd(1.0)
    fresh = lambda: init_train_state(jax.tree.map(jnp.asarray, params), optimizer, jax.random.key(0))  # noqa: E731
    step = make_train_step(embed_fn, optimizer, ALL_ON.temperature, donate=False, loss_spec=ALL_ON)
    want = _loss_and_grads(step, fresh(), batch)

    prepared = prepare_batch(batch)
    q = embed(params, batch["query_ids"], batch["query_mask"])
    p = embed(params, batch["passage_ids"], batch["passage_mask"])
    np.testing.assert_allclose(want[0], float(combined_loss(q, p, ALL_ON, batch_loss_inputs(prepared))), rtol=1e-5)

    mesh = make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    shardings = train_state_shardings(params, optimizer, jax.random.key(0), mesh, BERT_RULES)
    packed = next(_batcher(setup, packing=True, pack_shards=4, pack_row_multiple=2))
    sharded = make_train_step(embed_fn, optimizer, ALL_ON.temperature, mesh=mesh, state_shardings=shardings,
                              grad_cache_chunk=4, donate=False, loss_spec=ALL_ON)
    loss, grads = _loss_and_grads(sharded, jax.device_put(fresh(), shardings), packed)
    np.testing.assert_allclose(loss, want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


def _kl_to_teacher(embed, params, batch, spec):
    """Mean KL(teacher || student) over the groups of a batch (the distillation target)."""
    q = np.asarray(embed(params, batch["query_ids"], batch["query_mask"]), np.float64)
    p = np.asarray(embed(params, batch["passage_ids"], batch["passage_mask"]), np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    s = np.einsum("bd,bgd->bg", q, p.reshape(B, G, -1)) / spec.temperature
    t = batch["teacher_scores"].reshape(B, G).astype(np.float64) / spec.teacher_temperature
    log_s = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    log_t = t - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True)) - t.max(1, keepdims=True)
    return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=1)))


def test_distillation_run_lowers_the_kl_to_the_teacher(setup):
    _, _, embed_fn, params, embed = setup
    spec = LossSpec(temperature=0.05, info_nce_weight=0.0, kd_weight=1.0)
    batcher = _batcher(setup)
    batches = [next(batcher) for _ in range(3)]
    optimizer = optax.adam(3e-3)
    state = init_train_state(jax.tree.map(jnp.asarray, params), optimizer, jax.random.key(0))
    step = make_train_step(embed_fn, optimizer, spec.temperature, loss_spec=spec)
    before = [_kl_to_teacher(embed, params, b, spec) for b in batches]
    for i in range(9):
        state, _ = step(state, batches[i % 3])
    after = [_kl_to_teacher(embed, jax.device_get(state["params"]), b, spec) for b in batches]
    assert np.mean(after) < 0.8 * np.mean(before), (before, after)

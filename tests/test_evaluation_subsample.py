"""Capped dev evaluation: seeded task samples that keep what the scores measure."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from boom_jax.data.builtin import builtin_eval_tasks
from boom_jax.evaluation.runner import resolve_tasks
from boom_jax.evaluation.subsample import TaskCaps, stratified_indices, subsample_task, task_size


@pytest.fixture(scope="module")
def tasks():
    return {t.name: t for t in builtin_eval_tasks()}


def test_retrieval_sample_keeps_every_relevant_document_of_its_queries(tasks):
    task = tasks["debian_desc_retrieval"]
    small = subsample_task(task, TaskCaps(max_queries=30, max_documents=120))
    assert len(small.queries) == 30 and len(small.corpus) == 120
    assert set(small.qrels) == set(small.queries) <= set(task.queries)
    for qid, rel in small.qrels.items():
        assert rel == task.qrels[qid]
        assert set(rel) <= set(small.corpus)  # the gold documents are never dropped
    assert all(small.corpus[d] == task.corpus[d] for d in small.corpus)


def test_retrieval_sample_keeps_relevant_documents_beyond_the_document_cap(tasks):
    task = tasks["bible_paraphrase_retrieval"]
    small = subsample_task(task, TaskCaps(max_queries=50, max_documents=10))
    relevant = {d for rel in small.qrels.values() for d in rel}
    assert len(relevant) > 10 and set(small.corpus) == relevant


def test_samples_are_seeded(tasks):
    task = tasks["go_code_retrieval"]
    caps = TaskCaps(max_queries=25, max_documents=100)
    a, b = subsample_task(task, caps, seed=0), subsample_task(task, caps, seed=0)
    c = subsample_task(task, caps, seed=1)
    assert a.queries == b.queries and a.corpus == b.corpus
    assert set(a.queries) != set(c.queries)


def test_no_cap_returns_the_task_itself(tasks):
    task = tasks["wordnet_webster_pairs"]
    assert subsample_task(task, TaskCaps()) is task
    assert subsample_task(tasks["debian_section_clustering"], TaskCaps(max_queries=5)) is tasks["debian_section_clustering"]


def test_stratified_indices_keep_every_label_and_proportions():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["d"]
    idx = stratified_indices(labels, 20, np.random.default_rng(0))
    assert len(idx) == 20 and len(set(idx)) == 20 and idx == sorted(idx)
    counts = collections.Counter(labels[i] for i in idx)
    assert set(counts) == {"a", "b", "c", "d"}
    assert counts["a"] > counts["b"] > counts["c"] >= counts["d"] == 1
    assert stratified_indices(labels, 0, np.random.default_rng(0)) == list(range(100))


def test_classification_clustering_and_pairs_are_capped_per_split(tasks):
    caps = TaskCaps(max_texts=40)
    cls = subsample_task(tasks["debian_section_classification"], caps)
    assert len(cls.train_texts) == len(cls.train_labels) == 40 and len(cls.test_texts) == len(cls.test_labels) == 40
    assert set(cls.test_labels) <= set(cls.train_labels)
    clu = subsample_task(tasks["foldoc_category_clustering"], caps)
    assert len(clu.texts) == len(clu.labels) == 40 and len(set(clu.labels)) == len(set(tasks["foldoc_category_clustering"].labels))
    pairs = subsample_task(tasks["wordnet_webster_pairs"], caps)
    assert len(pairs.texts1) == len(pairs.texts2) == len(pairs.labels) == 40 and set(pairs.labels) == {0, 1}
    original = tasks["wordnet_webster_pairs"]
    originals = set(zip(original.texts1, original.texts2, original.labels))
    assert set(zip(pairs.texts1, pairs.texts2, pairs.labels)) <= originals


def test_caps_cut_the_cost_of_the_whole_builtin_suite(tasks):
    caps = TaskCaps(max_queries=60, max_documents=240, max_texts=200)
    full = sum(task_size(t) for t in tasks.values())
    capped = sum(task_size(subsample_task(t, caps)) for t in tasks.values())
    assert capped < full / 3


def test_resolve_tasks_applies_caps_to_builtin_tasks():
    (task,) = resolve_tasks("tech_faq_retrieval", caps=TaskCaps(max_queries=12, max_documents=50))
    task.load_data()
    split = task.dataset["default"]["test"]
    assert len(split["queries"]) == 12 and len(split["corpus"]) == 50


def test_bad_caps_name_the_field():
    with pytest.raises(ValueError, match="max_documents"):
        TaskCaps(max_documents=-1)


def test_max_seq_length_truncates_the_evaluated_inputs(minilm_path):
    from boom_jax.evaluation.runner import load_encoder

    long_text = "the quick brown fox jumps over the lazy dog " * 30
    full, short = load_encoder(minilm_path), load_encoder(minilm_path, max_seq_length=16)
    assert len(full.text_tokenizer.token_ids([long_text])[0]) == full.cfg.max_seq_length > 16
    assert len(short.text_tokenizer.token_ids([long_text])[0]) == 16
    head = " ".join(long_text.split()[:8])  # fits in 16 tokens: the same embedding either way
    np.testing.assert_allclose(full.encode([head]), short.encode([head]), atol=1e-5)
    assert not np.allclose(full.encode([long_text]), short.encode([long_text]), atol=1e-3)

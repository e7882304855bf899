"""The committed built-in corpus: loads, matches its manifest, has hard negatives, and no eval text leaks."""

from __future__ import annotations

import hashlib

import pytest

from boom_jax.data import builtin
from boom_jax.data.records import EvalTask, TrainDataset

REQUIRED_SETS = {"debian_desc", "debian_section", "wordnet_gloss", "python_code", "bible_paraphrase"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return builtin.builtin_manifest()


@pytest.fixture(scope="module")
def train_sets() -> list[TrainDataset]:
    return builtin.builtin_train_datasets()


@pytest.fixture(scope="module")
def eval_tasks() -> list[EvalTask]:
    return builtin.builtin_eval_tasks()


def test_files_match_manifest_sha256(manifest):
    for kind in ("train", "eval"):
        for name, info in manifest[kind].items():
            digest = hashlib.sha256((builtin.BUILTIN_DIR / info["file"]).read_bytes()).hexdigest()
            assert digest == info["sha256"], f"{kind}/{name}: sha256 differs from manifest"
    assert (builtin.BUILTIN_DIR / "NOTICE").read_text().count("- ") >= 5


def test_train_sets_match_manifest(manifest, train_sets):
    assert REQUIRED_SETS <= {d.name for d in train_sets}
    assert [d.name for d in train_sets] == list(manifest["train"])
    for d in train_sets:
        info = manifest["train"][d.name]
        assert len(d) == info["count"]
        assert 2000 <= len(d) <= 20000, d.name
        assert d.instruction == info["instruction"] and d.instruction
        assert d.task_type == info["task_type"]
        assert d.in_batch_negatives is (d.name != "debian_section")
        assert [e.index for e in d.examples] == list(range(len(d)))
        for e in d.examples:
            assert e.dataset == d.name and e.prompt == d.instruction
            assert e.query.strip() and e.pos and all(p.strip() for p in e.pos)
            assert len(e.neg) >= 3 and all(n.strip() for n in e.neg)
            assert not set(e.pos) & set(e.neg), f"{d.name}:{e.index}: a positive is also a negative"


def test_eval_tasks_match_manifest(manifest, eval_tasks):
    assert [t.name for t in eval_tasks] == list(manifest["eval"])
    types = {(t.type, t.domain) for t in eval_tasks}
    for needed in [("retrieval", "in"), ("classification", "in"), ("clustering", "in"),
                   ("pair_classification", "in"), ("retrieval", "out"), ("clustering", "out")]:
        assert needed in types
    for t in eval_tasks:
        info = manifest["eval"][t.name]
        assert (t.type, t.domain) == (info["type"], info["domain"])
        if t.type == "retrieval":
            assert info["counts"] == {"queries": len(t.queries), "corpus": len(t.corpus)}
            assert len(t.queries) >= 100 and set(t.qrels) == set(t.queries)
            assert all(d in t.corpus for rel in t.qrels.values() for d in rel)
        elif t.type == "classification":
            assert len(t.train_texts) == len(t.train_labels) == info["counts"]["train"]
            assert len(t.test_texts) == len(t.test_labels) == info["counts"]["test"]
        elif t.type == "clustering":
            assert len(t.texts) == len(t.labels) == info["counts"]["texts"]
        else:
            assert len(t.texts1) == len(t.texts2) == len(t.labels) == info["counts"]["pairs"]
            assert set(t.labels) == {0, 1}


def test_no_eval_text_in_training_text(train_sets, eval_tasks):
    train_texts = {x for d in train_sets for e in d.examples for x in (e.query, *e.pos, *e.neg)}
    for t in eval_tasks:
        texts = (list(t.queries.values()) + list(t.corpus.values()) + t.train_texts + t.test_texts
                 + t.texts + t.texts1 + t.texts2)
        leaked = [x for x in texts if x in train_texts]
        assert not leaked, f"{t.name}: {len(leaked)} evaluation texts occur in training, e.g. {leaked[0][:80]!r}"


def test_selection_limit_domain_and_unknown_names():
    (d,) = builtin.builtin_train_datasets(["python_code"], limit=5)
    assert d.name == "python_code" and len(d) == 5
    assert all(t.domain == "out" for t in builtin.builtin_eval_tasks(domain="out"))
    with pytest.raises(KeyError, match="available: .*bible_paraphrase"):
        builtin.builtin_train_datasets(["no_such_set"])
    with pytest.raises(KeyError, match="available: .*go_code_retrieval"):
        builtin.builtin_eval_tasks("nope")
    with pytest.raises(ValueError, match="domain"):
        builtin.builtin_eval_tasks(domain="mid")


def test_bm25_index_matches_rank_bm25_scores():
    import numpy as np
    from rank_bm25 import BM25Okapi

    from boom_jax.data.extract.bm25 import Bm25Index
    from boom_jax.data.extract.text import words

    docs = ["the cat sat on the mat", "a dog chased the cat", "stock markets fell sharply", "the mat was red", "dogs and cats"]
    queries = ["cat on a mat", "falling markets", "red dog"]
    index = Bm25Index(docs)
    reference = BM25Okapi([words(d) for d in docs])
    for row, query in zip(index.scores(queries), queries):
        np.testing.assert_allclose(row, reference.get_scores(words(query)), rtol=1e-12)
    expected = [int(d) for d in np.argsort(-reference.get_scores(words(queries[0])), kind="stable") if d != 0][:2]
    assert index.search(queries, 2, lambda q, d: d == 0)[0] == expected


def test_osis_cleaning_and_near_duplicates():
    from boom_jax.data.extract.bible import clean_osis
    from boom_jax.data.extract.near_dup import NearDuplicateIndex

    markup = ('<w lemma="strong:H0430">God</w><note placement="foot">a note</note><w lemma="x">created</w> '
              '<w>the</w> <w>heavens</w> . ¶')
    assert clean_osis(markup) == "God created the heavens."
    index = NearDuplicateIndex(["one two three four five six seven eight", "alpha beta gamma delta epsilon"])
    assert index.covered("one two three four five six seven eight nine ten") == 5 / 7
    assert index.covered("zeta eta theta iota kappa") == 0.0

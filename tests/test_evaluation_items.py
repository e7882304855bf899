"""Per-item scores from mteb's predictions: over all items they give mteb's main score, per task type."""

from __future__ import annotations

import numpy as np
import pytest

from boom_jax.evaluation import metrics
from boom_jax.evaluation.items import (classification_items, item_metric, load_items, pair_items,
                                       retrieval_items)
from boom_jax.evaluation.runner import evaluate_models
from boom_jax.evaluation.subsample import TaskCaps

TASKS = ["wordnet_gloss_retrieval", "debian_section_classification", "debian_section_clustering",
         "wordnet_webster_pairs"]


def test_items_reproduce_mtebs_main_scores_on_builtin_tasks(minilm_path, tmp_path):
    out = tmp_path / "eval"
    results = evaluate_models({"m": minilm_path}, TASKS, out, batch_size=16, show_progress_bar=False,
                              caps=TaskCaps(max_queries=16, max_documents=48, max_texts=40), max_seq_length=64)
    items = load_items(str(out), "m")
    assert sorted(items) == sorted(TASKS)
    for task in TASKS:
        n, metric = item_metric(items[task])
        main = results["m"][task]["main_score"]
        assert 0.05 < main < 0.999, task
        assert metric(np.arange(n)) == pytest.approx(main, abs=1e-5), task  # mteb rounds the saved scores
    assert item_metric(items["wordnet_gloss_retrieval"])[0] == 16  # one item per judged query
    assert item_metric(items["wordnet_webster_pairs"])[0] == 40
    assert not (out / "predictions").exists()  # mteb's prediction files became item records

    # a resumed evaluation reads the task results from mteb's cache and keeps the saved items
    again = evaluate_models({"m": minilm_path}, TASKS, out, batch_size=16, show_progress_bar=False,
                            caps=TaskCaps(max_queries=16, max_documents=48, max_texts=40), max_seq_length=64)
    assert again == results and load_items(str(out), "m") == items


def test_retrieval_items_break_ties_by_document_id_and_skip_unjudged_queries():
    qrels = {"q1": {"d2": 1}, "q2": {"d1": 1}, "q3": {}}
    predictions = {"q1": {"d1": 0.5, "d2": 0.5, "d3": 0.1}, "q2": {"d1": 0.2, "d2": 0.9}}
    # ties: trec_eval ranks the larger document id first, so d2 leads q1's ranking
    assert retrieval_items(predictions, qrels) == [1.0, metrics.ndcg_at_k(["d2", "d1"], {"d1": 1}, 10)]


def test_classification_and_pair_items():
    assert classification_items([[0, 1, 1], [0, 0, 1]], [0, 1, 0]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="do not match 2 test labels"):
        classification_items([[0, 1, 1]], [0, 1])
    record = pair_items({"similarity_scores": [0.9, 0.1, 0.8], "cosine_scores": [0.9, 0.1, 0.8],
                         "manhattan_distances": [1.0, 5.0, 0.5], "euclidean_distances": [1.0, 2.0, 3.0],
                         "dot_scores": [0.2, 0.3, 0.1]}, [1, 0, 1])
    n, metric = item_metric(record)
    assert n == 3 and metric(np.arange(3)) == 1.0  # the best similarity ranks both positives first
    # manhattan distances are negated: small distance = similar
    assert record["scores"][2] == [-1.0, -5.0, -0.5]
    assert metric(np.array([1, 1, 1])) == 0.0  # no positive pair drawn

"""NumPy evaluation metrics against hand-computed cases and the reference implementations
(pytrec_eval as mteb uses it, scikit-learn, SciPy)."""

import math

import numpy as np
import pytest
import pytrec_eval
import scipy.stats
import sklearn.metrics

from boom_jax.evaluation import metrics


def test_ndcg_map_recall_hand_computed():
    ranking = ["d1", "d2", "d3", "d4"]
    relevance = {"d2": 2, "d4": 1, "d9": 1}
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(ranking, relevance, 10) == pytest.approx(dcg / idcg)
    assert metrics.ndcg_at_k(ranking, relevance, 1) == 0.0
    # relevant at ranks 2 and 4, three relevant in total
    assert metrics.average_precision_at_k(ranking, relevance, 10) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert metrics.average_precision_at_k(ranking, relevance, 3) == pytest.approx((1 / 2) / 3)
    assert metrics.recall_at_k(ranking, relevance, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranking, relevance, 4) == pytest.approx(2 / 3)


def test_rank_documents_breaks_ties_by_doc_id_descending():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert metrics.rank_documents(scores, ["a", "b", "c", "d"]) == [["b", "c", "a", "d"]]
    with pytest.raises(ValueError, match="shape"):
        metrics.rank_documents(scores, ["a", "b"])


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_retrieval_scores_match_pytrec_eval(similarity):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(12, 8))
    d = rng.normal(size=(40, 8)) * rng.uniform(0.2, 3.0, size=(40, 1))  # lengths matter for "dot"
    qids = [f"q{i}" for i in range(12)]
    dids = [f"doc{i}" for i in range(40)]
    qrels = {
        qid: {dids[j]: int(rng.integers(1, 3)) for j in rng.choice(40, size=int(rng.integers(1, 5)), replace=False)}
        for qid in qids
    }
    qrels["q3"]["doc7"] = 0  # judged non-relevant
    ours = metrics.retrieval_scores(q, d, qids, dids, qrels, k_values=(1, 5, 10, 20), similarity=similarity)

    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
    sims = q @ d.T
    run = {qid: {did: float(sims[i, j]) for j, did in enumerate(dids)} for i, qid in enumerate(qids)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,5,10,20", "map_cut.1,5,10,20", "recall.1,5,10,20"})
    ref = evaluator.evaluate(run)
    for k in (1, 5, 10, 20):
        for ours_key, ref_key in ((f"ndcg_at_{k}", f"ndcg_cut_{k}"), (f"map_at_{k}", f"map_cut_{k}"), (f"recall_at_{k}", f"recall_{k}")):
            expected = np.mean([ref[qid][ref_key] for qid in qids])
            assert ours[ours_key] == pytest.approx(expected, abs=1e-9), ours_key


def test_retrieval_scores_reject_unjudged_queries():
    with pytest.raises(ValueError, match="no query has relevance judgments"):
        metrics.retrieval_scores(np.ones((1, 2)), np.ones((2, 2)), ["q"], ["a", "b"], {"q": {}})


def test_accuracy_and_v_measure_match_sklearn():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 4, size=60)
    p = np.where(rng.random(60) < 0.6, t, rng.integers(0, 5, size=60))
    assert metrics.accuracy(t, p) == pytest.approx(sklearn.metrics.accuracy_score(t, p))
    assert metrics.v_measure(t, p) == pytest.approx(sklearn.metrics.v_measure_score(t, p))
    assert metrics.v_measure(["x", "x", "y"], [5, 5, 9]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        metrics.accuracy([1, 2], [1])


def test_spearman_matches_scipy_with_ties():
    x = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0, 4.0]
    y = [0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.8]
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert metrics.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_average_precision_matches_sklearn_with_ties():
    labels = [1, 0, 1, 1, 0, 0, 1, 0]
    scores = [0.9, 0.9, 0.7, 0.4, 0.4, 0.4, 0.2, 0.1]
    assert metrics.average_precision(labels, scores) == pytest.approx(sklearn.metrics.average_precision_score(labels, scores))
    # hand case: positives at ranks 1 and 3 of 3 -> (1 + 2/3) / 2
    assert metrics.average_precision([1, 0, 1], [3.0, 2.0, 1.0]) == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="at least one positive"):
        metrics.average_precision([0, 0], [0.1, 0.2])


def test_cosine_similarity_pairs():
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(metrics.cosine_similarity_pairs(a, b), [1.0, -1.0])

"""Evaluation metrics in plain NumPy: retrieval (nDCG, MAP, recall), classification, clustering, pairs.

Retrieval metrics follow trec_eval (the definitions mteb reports through pytrec_eval): linear gains,
documents with relevance > 0 count as relevant, score ties broken by document id, descending. They are
used directly by the fast dev evaluation during training, without mteb's overhead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_K_VALUES = (1, 3, 5, 10, 100)


def rank_documents(scores: np.ndarray, doc_ids: Sequence[str], top_k: int | None = None) -> list[list[str]]:
    """Per query (row of `scores` [Q, D]), the document ids sorted best first, cut at `top_k`.

    Ties in score are broken by document id, descending, as trec_eval does.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(doc_ids):
        raise ValueError(f"scores must have shape [num_queries, {len(doc_ids)}], got {scores.shape}")
    ids = np.asarray(list(doc_ids), dtype=object)
    # lexsort sorts by the last key first: score descending, then id descending
    id_rank = np.argsort(np.argsort(ids.astype(str), kind="stable"), kind="stable")
    rankings = []
    for row in scores:
        order = np.lexsort((-id_rank, -row))
        if top_k is not None:
            order = order[:top_k]
        rankings.append([str(d) for d in ids[order]])
    return rankings


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain with linear gains and log2(rank + 1) discounts."""
    gains = np.asarray(gains, dtype=np.float64)
    if gains.size == 0:
        return 0.0
    return float(np.sum(gains / np.log2(np.arange(2, gains.size + 2))))


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranked list against graded relevance judgments (doc id -> grade)."""
    gains = [max(float(relevance.get(d, 0)), 0.0) for d in ranking[:k]]
    ideal = sorted((float(r) for r in relevance.values() if r > 0), reverse=True)[:k]
    ideal_dcg = dcg(ideal)
    return dcg(gains) / ideal_dcg if ideal_dcg > 0 else 0.0


def average_precision_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int | None = None) -> float:
    """Average precision of one ranked list, cut at k (trec_eval map_cut: divides by all relevant docs)."""
    num_relevant = sum(1 for r in relevance.values() if r > 0)
    if num_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, doc in enumerate(ranking[:k] if k else ranking, start=1):
        if relevance.get(doc, 0) > 0:
            hits += 1
            total += hits / rank
    return total / num_relevant


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Fraction of the relevant documents found in the top k."""
    relevant = {d for d, r in relevance.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def retrieval_scores(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    similarity: str = "cosine",
) -> dict[str, float]:
    """Mean nDCG@k, MAP@k and recall@k over the queries that have judgments, scoring by the model's
    similarity ("cosine", or "dot" for a model exported with similarity_fn_name "dot").

    Returns keys like "ndcg_at_10", "map_at_10", "recall_at_100" (values in [0, 1]).
    """
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity={similarity!r}: expected 'cosine' or 'dot'")
    unit = _unit_rows if similarity == "cosine" else np.asarray
    q = unit(query_embeddings)
    d = unit(doc_embeddings)
    if len(q) != len(query_ids) or len(d) != len(doc_ids):
        raise ValueError("embeddings and ids differ in length")
    judged = [i for i, qid in enumerate(query_ids) if qrels.get(qid)]
    if not judged:
        raise ValueError("no query has relevance judgments in qrels")
    rankings = rank_documents(q[judged] @ d.T, doc_ids, top_k=max(k_values))
    out: dict[str, float] = {}
    for k in k_values:
        per_query = [(ranking, qrels[query_ids[i]]) for i, ranking in zip(judged, rankings)]
        out[f"ndcg_at_{k}"] = float(np.mean([ndcg_at_k(r, rel, k) for r, rel in per_query]))
        out[f"map_at_{k}"] = float(np.mean([average_precision_at_k(r, rel, k) for r, rel in per_query]))
        out[f"recall_at_{k}"] = float(np.mean([recall_at_k(r, rel, k) for r, rel in per_query]))
    return out


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of predictions equal to the true label."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"accuracy needs two non-empty label lists of equal length, got {y_true.shape} and {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """V-measure: harmonic mean of homogeneity and completeness of a clustering."""
    _, t = np.unique(np.asarray(labels_true), return_inverse=True)
    _, c = np.unique(np.asarray(labels_pred), return_inverse=True)
    if t.size != c.size or t.size == 0:
        raise ValueError("v_measure needs two non-empty label lists of equal length")
    table = np.zeros((t.max() + 1, c.max() + 1))
    np.add.at(table, (t, c), 1)
    h_true, h_pred = _entropy(table.sum(1)), _entropy(table.sum(0))
    mutual = h_true + h_pred - _entropy(table.ravel())
    homogeneity = mutual / h_true if h_true > 0 else 1.0
    completeness = mutual / h_pred if h_pred > 0 else 1.0
    if homogeneity + completeness == 0:
        return 0.0
    return float(2 * homogeneity * completeness / (homogeneity + completeness))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.zeros(len(values))
    counts = np.zeros(len(values))
    np.add.at(sums, inverse, ranks)
    np.add.at(counts, inverse, 1)
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("spearman needs two sequences of equal length >= 2")
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision of binary labels ranked by score (sklearn's step-wise definition, ties grouped)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or not labels.any():
        raise ValueError("average_precision needs equal-length labels and scores with at least one positive")
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    true_pos = np.cumsum(labels)[last]
    precision = true_pos / (last + 1)
    recall = true_pos / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def cosine_similarity_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    return np.sum(_unit_rows(a) * _unit_rows(b), axis=1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

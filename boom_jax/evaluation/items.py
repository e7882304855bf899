"""Per-item scores of an evaluation: the units a paired bootstrap resamples.

mteb reports one main score per task; comparing two training strategies needs the scores of the
items behind it, so that the same items can be drawn for both (a paired bootstrap). For the
built-in tasks the items come from mteb's own predictions (`mteb.evaluate(prediction_folder=...)`),
so each task's metric over all its items is mteb's main score:

- retrieval: one nDCG@10 per judged query, from mteb's ranked documents (mean = ndcg_at_10);
- classification: per test text, the fraction of mteb's classifier runs that label it correctly
  (mean = accuracy, the mean over runs);
- pair classification: the pairs' labels and mteb's five similarity scores (metric = the best
  average precision over them, mteb's max_ap), computed on the resampled pairs;
- clustering: the V-measure of each of mteb's bootstrap subsets of texts (k-means per subset; mean =
  v_measure), i.e. the resampled items are mteb's text subsets, not single texts: one text's
  contribution to a V-measure cannot be separated, and re-clustering every resample would cost a
  k-means per draw.

An item record is JSON: {"kind": "mean", "scores": [...]} or {"kind": "max_ap", "labels": [...],
"scores": [[...], ...]} (one list per similarity, higher = more similar). `item_metric(record)` gives
(number of items, metric(indices) -> score).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from boom_jax.evaluation import metrics

# mteb's pair-classification similarities: (key in its predictions, higher = more similar)
PAIR_SIMILARITIES = (("similarity_scores", True), ("cosine_scores", True), ("manhattan_distances", False),
                     ("euclidean_distances", False), ("dot_scores", True))
ITEM_KINDS = ("mean", "max_ap")


def retrieval_items(predictions: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                    k: int = 10) -> list[float]:
    """nDCG@k of every judged query (sorted by query id) from mteb's {query: {document: score}}."""
    out = []
    for qid in sorted(q for q, rel in qrels.items() if any(v > 0 for v in rel.values())):
        scored = predictions.get(qid, {})
        # mteb scores with pytrec_eval, which breaks score ties by document id, descending
        ranking = [d for d, _ in sorted(scored.items(), key=lambda x: (x[1], x[0]), reverse=True)]
        out.append(metrics.ndcg_at_k(ranking, qrels[qid], k))
    return out


def classification_items(predictions: Sequence[Sequence[int]], labels: Sequence[int]) -> list[float]:
    """Per test text: the fraction of mteb's classifier runs (`predictions`, one list per run) that are right."""
    runs = np.asarray(predictions)
    truth = np.asarray(labels)
    if runs.ndim != 2 or runs.shape[1] != truth.size:
        raise ValueError(f"classification predictions of shape {runs.shape} do not match {truth.size} test labels")
    return (runs == truth[None, :]).mean(axis=0).tolist()


def pair_items(predictions: Mapping[str, Sequence[float]], labels: Sequence[int]) -> dict:
    """The max_ap record of a pair task from mteb's similarity scores (distances negated)."""
    scores = [[float(v) if higher else -float(v) for v in predictions[key]] for key, higher in PAIR_SIMILARITIES]
    if any(len(s) != len(labels) for s in scores):
        raise ValueError("pair predictions and labels differ in length")
    return {"kind": "max_ap", "labels": [int(x) for x in labels], "scores": scores}


def clustering_items(task_scores: Mapping[str, Any]) -> list[float]:
    """V-measure of each of mteb's bootstrap subsets (first level) from its task scores."""
    levels = task_scores.get("v_measures") or {}
    if not levels:
        raise ValueError("clustering scores hold no per-subset v_measures")
    return [float(v) for v in levels[sorted(levels)[0]]]


def task_items(eval_task: Any, predictions: Any, task_scores: Mapping[str, Any]) -> dict:
    """The item record of one built-in task (`eval_task`: the capped EvalTask mteb ran), from mteb's
    predictions for its test split and its scores dict."""
    if eval_task.type == "retrieval":
        return {"kind": "mean", "scores": retrieval_items(predictions, eval_task.qrels)}
    if eval_task.type == "classification":
        ids = {label: i for i, label in enumerate(sorted({str(x) for x in (*eval_task.train_labels, *eval_task.test_labels)}))}
        return {"kind": "mean", "scores": classification_items(predictions, [ids[str(x)] for x in eval_task.test_labels])}
    if eval_task.type == "pair_classification":
        return pair_items(predictions, eval_task.labels)
    if eval_task.type == "clustering":
        return {"kind": "mean", "scores": clustering_items(task_scores)}
    raise ValueError(f"no item scores for task type {eval_task.type!r}")


def read_predictions(path: str) -> Any:
    """The test-split predictions of an mteb prediction file (subset "default")."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["default"]["test"]


def item_metric(record: Mapping[str, Any]) -> tuple[int, Callable[[np.ndarray], float]]:
    """(number of items, metric(item indices) -> score) of an item record; the metric over
    `np.arange(n)` is the task's main score."""
    kind = record.get("kind")
    if kind == "mean":
        scores = np.asarray(record["scores"], dtype=np.float64)
        return scores.size, lambda idx: float(scores[idx].mean())
    if kind == "max_ap":
        labels = np.asarray(record["labels"], dtype=bool)
        sims = [np.asarray(s, dtype=np.float64) for s in record["scores"]]
        return labels.size, lambda idx: max(_ap(labels[idx], s[idx]) for s in sims)
    raise ValueError(f"unknown item kind {kind!r}; expected one of {ITEM_KINDS}")


def _ap(labels: np.ndarray, scores: np.ndarray) -> float:
    # a resample without a positive pair has no precision to average: score it 0 (it is rare at ~100 pairs)
    return metrics.average_precision(labels, scores) if labels.any() else 0.0


def items_path(out_dir: str, label: str, task: str) -> str:
    """Where an evaluation folder keeps one model's item record of one task."""
    return os.path.join(out_dir, "items", label, f"{task}.json")


def load_items(out_dir: str, label: str) -> dict[str, dict]:
    """{task: item record} of one model in an evaluation folder ({} when it has none)."""
    folder = os.path.join(out_dir, "items", label)
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                out[name[:-len(".json")]] = json.load(f)
    return out

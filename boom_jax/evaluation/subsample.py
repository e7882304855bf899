"""Seeded, capped copies of evaluation tasks: cheap dev evaluation on a CPU.

A full pass of the built-in dev tasks encodes ~13k texts per model; a bag compares half a dozen
models and a training run may evaluate every few hundred steps. `subsample_task` keeps a
deterministic sample that preserves what the score measures:
- retrieval: `max_queries` queries (among those with relevance judgements), ALL their relevant
  documents, then other documents drawn at random up to `max_documents` (distractors);
- classification, clustering: `max_texts` items per split, stratified by label (every label keeps
  at least one item while the cap allows);
- pair classification: `max_texts` pairs, stratified by label.
A cap of 0 keeps everything. The same (task, caps, seed) gives the same sample on any machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from boom_jax.data.records import EvalTask
from boom_jax.data.sampling import dataset_rng


@dataclasses.dataclass(frozen=True)
class TaskCaps:
    """Caps of a capped evaluation (0 = no cap)."""

    max_queries: int = 0
    max_documents: int = 0
    max_texts: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{field.name} must be an int >= 0 (0 = no cap), got {value!r}")

    @property
    def active(self) -> bool:
        return bool(self.max_queries or self.max_documents or self.max_texts)


def stratified_indices(labels: Sequence, k: int, rng: np.random.Generator) -> list[int]:
    """`k` positions (sorted) drawn from `labels`, each label's share proportional to its count.

    Every label gets at least one position while k allows; leftovers go to the largest labels.
    """
    n = len(labels)
    if k <= 0 or k >= n:
        return list(range(n))
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(str(label), []).append(i)
    names = sorted(by_label, key=lambda lb: (-len(by_label[lb]), lb))
    quota = {lb: max(1, int(k * len(by_label[lb]) / n)) for lb in names}
    # trim (smallest labels keep their one item longest) or fill (largest labels first) to exactly k
    for lb in reversed(names):
        while sum(quota.values()) > k and quota[lb] > 0:
            quota[lb] -= 1
    while sum(quota.values()) < k:
        for lb in names:
            if sum(quota.values()) < k and quota[lb] < len(by_label[lb]):
                quota[lb] += 1
    picked = []
    for lb in names:
        members = by_label[lb]
        picked += [members[j] for j in rng.permutation(len(members))[: quota[lb]]]
    return sorted(picked)


def _retrieval(task: EvalTask, caps: TaskCaps, rng: np.random.Generator) -> EvalTask:
    qids = sorted(q for q in task.queries if task.qrels.get(q))
    if caps.max_queries and len(qids) > caps.max_queries:
        qids = sorted(qids[i] for i in rng.permutation(len(qids))[: caps.max_queries])
    relevant = sorted({d for q in qids for d in task.qrels[q] if d in task.corpus})
    others = sorted(set(task.corpus) - set(relevant))
    room = len(others) if not caps.max_documents else max(0, caps.max_documents - len(relevant))
    if room < len(others):
        others = [others[i] for i in rng.permutation(len(others))[:room]]
    dids = set(relevant) | set(others)
    return dataclasses.replace(
        task,
        queries={q: task.queries[q] for q in qids},
        corpus={d: t for d, t in task.corpus.items() if d in dids},
        qrels={q: dict(task.qrels[q]) for q in qids},
    )


def _take(values: Sequence, idx: Sequence[int]) -> list:
    return [values[i] for i in idx]


def subsample_task(task: EvalTask, caps: TaskCaps, seed: int = 0) -> EvalTask:
    """A capped copy of `task` (the task itself when no cap applies)."""
    if not caps.active:
        return task
    rng = dataset_rng(seed, "eval-subsample", task.name)
    if task.type == "retrieval":
        return _retrieval(task, caps, rng)
    if not caps.max_texts:
        return task
    if task.type == "classification":
        train = stratified_indices(task.train_labels, caps.max_texts, rng)
        test = stratified_indices(task.test_labels, caps.max_texts, rng)
        return dataclasses.replace(task, train_texts=_take(task.train_texts, train),
                                   train_labels=_take(task.train_labels, train),
                                   test_texts=_take(task.test_texts, test), test_labels=_take(task.test_labels, test))
    if task.type == "clustering":
        idx = stratified_indices(task.labels, caps.max_texts, rng)
        return dataclasses.replace(task, texts=_take(task.texts, idx), labels=_take(task.labels, idx))
    if task.type == "pair_classification":
        idx = stratified_indices(task.labels, caps.max_texts, rng)
        return dataclasses.replace(task, texts1=_take(task.texts1, idx), texts2=_take(task.texts2, idx),
                                   labels=_take(task.labels, idx))
    raise ValueError(f"EvalTask {task.name!r}: no subsampling rule for type {task.type!r}")


def subsample_tasks(tasks: Sequence[EvalTask], caps: TaskCaps, seed: int = 0) -> list[EvalTask]:
    """`subsample_task` over several tasks."""
    return [subsample_task(t, caps, seed) for t in tasks]


def task_size(task: EvalTask) -> int:
    """Texts a model encodes for the task (the cost of evaluating it)."""
    return (len(task.queries) + len(task.corpus) + len(task.train_texts) + len(task.test_texts) + len(task.texts)
            + len(task.texts1) + len(task.texts2))

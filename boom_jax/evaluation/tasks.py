"""In-memory `EvalTask`s as mteb tasks, so mteb scores them offline exactly as it scores its own.

mteb's registered tasks download their data; these hold theirs already (`load_data` only wraps it in
the dataset format each mteb abstract task expects). The task instruction (`EvalTask.instruction`,
else its description) becomes the mteb task prompt, which instruction-following encoders put on queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.abstask import AbsTask
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from boom_jax.data.records import EvalTask

# EvalTask.type -> (mteb task type, main score)
MTEB_TYPES = {
    "retrieval": ("Retrieval", "ndcg_at_10"),
    "classification": ("Classification", "accuracy"),
    "clustering": ("Clustering", "v_measure"),
    "pair_classification": ("PairClassification", "max_ap"),
}
# mteb task type -> EvalTask.type, for labelling results of any mteb task
TYPE_FROM_MTEB = {mteb_type: ours for ours, (mteb_type, _) in MTEB_TYPES.items()}
SPLIT = "test"


def task_instruction(task: EvalTask) -> str:
    """The instruction put on queries: the task's own instruction, else its description."""
    return task.instruction or task.description or f"Given a query, retrieve relevant passages ({task.name})"


def task_fingerprint(task: EvalTask) -> str:
    """A short hash of everything a local task holds (its texts, labels, judgements, instruction): the
    dataset revision mteb records, so results of a differently sampled task are never taken for these."""
    data = json.dumps(dataclasses.asdict(task), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


def task_metadata(task: EvalTask) -> TaskMetadata:
    """mteb metadata for a local task: one English test split, no hub dataset behind it."""
    mteb_type, main_score = MTEB_TYPES[task.type]
    return TaskMetadata(
        name=task.name,
        description=task.description or task.name,
        reference=None,
        dataset={"path": f"boom_jax/builtin/{task.name}", "revision": task_fingerprint(task)},
        type=mteb_type,
        category="t2t",
        modalities=["text"],
        eval_splits=[SPLIT],
        eval_langs=["eng-Latn"],
        main_score=main_score,
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation=None,
        prompt=task_instruction(task),
    )


def _check_nonempty(task: EvalTask, **fields: Any) -> None:
    for name, value in fields.items():
        if not value:
            raise ValueError(f"EvalTask {task.name!r} ({task.type}): field {name!r} is empty")


def _retrieval_split(task: EvalTask) -> RetrievalSplitData:
    _check_nonempty(task, queries=task.queries, corpus=task.corpus, qrels=task.qrels)
    unknown = sorted({d for rel in task.qrels.values() for d in rel} - set(task.corpus))
    if unknown:
        raise ValueError(f"EvalTask {task.name!r}: qrels name documents missing from the corpus: {unknown[:5]}")
    queries = Dataset.from_dict({"id": list(task.queries), "text": list(task.queries.values())})
    corpus = Dataset.from_dict(
        {"id": list(task.corpus), "text": list(task.corpus.values()), "title": [""] * len(task.corpus)}
    )
    qrels = {qid: {did: int(r) for did, r in rel.items()} for qid, rel in task.qrels.items()}
    return RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=qrels, top_ranked=None)


def _loader(build):
    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = build(self.eval_task)
        self.data_loaded = True

    return load_data


def _retrieval_data(task: EvalTask) -> dict:
    return {"default": {SPLIT: _retrieval_split(task)}}


def _classification_data(task: EvalTask) -> DatasetDict:
    _check_nonempty(task, train_texts=task.train_texts, test_texts=task.test_texts)
    for prefix, texts, labels in (("train", task.train_texts, task.train_labels), ("test", task.test_texts, task.test_labels)):
        if len(texts) != len(labels):
            raise ValueError(f"EvalTask {task.name!r}: {prefix}_texts ({len(texts)}) and {prefix}_labels ({len(labels)}) differ in length")
    # integer class ids: mteb's binary scores (average precision) expect labels 0/1
    label_ids = {label: i for i, label in enumerate(sorted({str(x) for x in (*task.train_labels, *task.test_labels)}))}
    return DatasetDict({
        "train": Dataset.from_dict({"text": list(task.train_texts), "label": [label_ids[str(x)] for x in task.train_labels]}),
        SPLIT: Dataset.from_dict({"text": list(task.test_texts), "label": [label_ids[str(x)] for x in task.test_labels]}),
    })


def _clustering_data(task: EvalTask) -> DatasetDict:
    _check_nonempty(task, texts=task.texts)
    if len(task.texts) != len(task.labels):
        raise ValueError(f"EvalTask {task.name!r}: texts ({len(task.texts)}) and labels ({len(task.labels)}) differ in length")
    return DatasetDict({SPLIT: Dataset.from_dict({"sentences": list(task.texts), "labels": [str(x) for x in task.labels]})})


def _pair_data(task: EvalTask) -> DatasetDict:
    _check_nonempty(task, texts1=task.texts1)
    if not len(task.texts1) == len(task.texts2) == len(task.labels):
        raise ValueError(
            f"EvalTask {task.name!r}: texts1 ({len(task.texts1)}), texts2 ({len(task.texts2)}) and labels "
            f"({len(task.labels)}) differ in length"
        )
    bad = sorted({x for x in task.labels if x not in (0, 1)})
    if bad:
        raise ValueError(f"EvalTask {task.name!r}: pair labels must be 0 or 1, got {bad[:5]}")
    return DatasetDict({SPLIT: Dataset.from_dict(
        {"sentence1": list(task.texts1), "sentence2": list(task.texts2), "labels": [int(x) for x in task.labels]}
    )})


class LocalRetrievalTask(AbsTaskRetrieval):
    """An `EvalTask` of type retrieval as an mteb retrieval task."""

    load_data = _loader(_retrieval_data)


class LocalClassificationTask(AbsTaskClassification):
    """An `EvalTask` of type classification (logistic regression on embeddings, mteb's protocol)."""

    load_data = _loader(_classification_data)


class LocalClusteringTask(AbsTaskClustering):
    """An `EvalTask` of type clustering: k-means on bootstrap samples of all texts, V-measure."""

    max_fraction_of_documents_to_embed = None
    max_document_to_embed = None
    load_data = _loader(_clustering_data)


class LocalPairClassificationTask(AbsTaskPairClassification):
    """An `EvalTask` of type pair_classification: average precision of the pair similarities."""

    load_data = _loader(_pair_data)


_CLASSES = {
    "retrieval": LocalRetrievalTask,
    "classification": LocalClassificationTask,
    "clustering": LocalClusteringTask,
    "pair_classification": LocalPairClassificationTask,
}


def to_mteb_task(task: EvalTask) -> AbsTask:
    """Wrap one `EvalTask` as an mteb task instance (data is validated and loaded on first use)."""
    cls = _CLASSES[task.type]
    # metadata is a class attribute in mteb; a per-task subclass keeps tasks independent
    sub = type(f"{cls.__name__}_{task.name}", (cls,), {"metadata": task_metadata(task), "eval_task": task})
    if task.type == "clustering":
        sub.max_documents_per_cluster = len(task.texts)
    mteb_task = sub()
    mteb_task.eval_task = task
    mteb_task.domain = task.domain
    return mteb_task


def to_mteb_tasks(tasks: list[EvalTask]) -> list[AbsTask]:
    """Wrap several `EvalTask`s; names must be unique."""
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate task names: {dupes}")
    return [to_mteb_task(t) for t in tasks]

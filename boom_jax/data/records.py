"""The record types every data source is normalized into: training examples and evaluation tasks."""

from __future__ import annotations

import dataclasses
from typing import Literal

TaskType = Literal["retrieval", "classification", "clustering", "pair_classification", "sts"]
EVAL_TASK_TYPES = ("retrieval", "classification", "clustering", "pair_classification")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training group: a query, its positives and its hard negatives.

    `index` is the example's position in its dataset, the id that subset manifests record.
    `pos_scores` / `neg_scores`: a teacher's score of each positive / negative for this query (the
    FlagEmbedding fields), used by the distillation losses; both empty or both of matching lengths.
    """

    dataset: str
    index: int
    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    prompt: str = ""
    task_type: str = "retrieval"
    # Teacher scores (distillation): one per positive / negative, or empty when the data has none.
    pos_scores: tuple[float, ...] = ()
    neg_scores: tuple[float, ...] = ()


@dataclasses.dataclass
class TrainDataset:
    """A named training set with the settings that shape its batches and its loss."""

    name: str
    task_type: str
    examples: list[Example]
    in_batch_negatives: bool = True
    instruction: str = ""
    hard_negatives: int | None = None  # negatives per group for this dataset; None = the batcher's default
    # text put before every passage (positives and negatives), e.g. E5's "passage: "; "" = none
    passage_prompt: str = ""

    def __len__(self) -> int:
        return len(self.examples)


@dataclasses.dataclass
class EvalTask:
    """An evaluation task held in memory; which fields are filled depends on `type`.

    retrieval: queries, corpus, qrels. classification: train/test texts and labels.
    clustering: texts, labels. pair_classification: texts1, texts2, labels (0/1).
    """

    name: str
    type: str
    domain: Literal["in", "out"]
    description: str = ""
    instruction: str = ""
    queries: dict[str, str] = dataclasses.field(default_factory=dict)
    corpus: dict[str, str] = dataclasses.field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    train_texts: list[str] = dataclasses.field(default_factory=list)
    train_labels: list[str] = dataclasses.field(default_factory=list)
    test_texts: list[str] = dataclasses.field(default_factory=list)
    test_labels: list[str] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    texts1: list[str] = dataclasses.field(default_factory=list)
    texts2: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.type not in EVAL_TASK_TYPES:
            raise ValueError(f"EvalTask {self.name!r}: unknown type {self.type!r}; expected one of {EVAL_TASK_TYPES}")
        if self.domain not in ("in", "out"):
            raise ValueError(f"EvalTask {self.name!r}: domain must be 'in' or 'out', got {self.domain!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in ({}, [], "")}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalTask":
        return cls(**d)

"""A batch plan without duplicate texts: sentence-transformers' NoDuplicatesBatchSampler for schedules.

Each planned batch is refilled, in plan order, with items (its own, after the ones an earlier batch of
the same dataset had to defer) whose query and positive texts are not yet in the batch; an item that
collides waits for a later batch of the same dataset (or of the same mixed stream). Batches that cannot
be filled are dropped with the items left at the end, as partial batches are, so an epoch may have a
few fewer steps. sentence-transformers compares every column of a row (its negatives too); here the
query and the positives are compared, the texts that turn into false negatives of one another (a hard
negative shared by two groups is a true negative of both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from boom_jax.data.records import TrainDataset
from boom_jax.data.schedules import PlannedBatch


def item_texts(datasets: Mapping[str, TrainDataset], query_text: Callable) -> Callable[[tuple[str, int]], set[str]]:
    """(dataset, position) -> the texts compared for duplicates: the query as the model sees it, the positives."""
    def texts(item: tuple[str, int]) -> set[str]:
        example = datasets[item[0]].examples[item[1]]
        return {query_text(example), *example.pos}

    return texts


def no_duplicates_plan(plan: Sequence[PlannedBatch], texts: Callable[[tuple[str, int]], Iterable[str]],
                       batch_size: int) -> list[PlannedBatch]:
    """The batches of ``plan`` refilled so that no text of ``texts(item)`` appears twice in a batch."""
    pending: dict[str | None, list[tuple[str, int]]] = {}
    out: list[PlannedBatch] = []

    def fill(candidates: list[tuple[str, int]]) -> tuple[list, list]:
        batch, seen, deferred = [], set(), []
        for item in candidates:
            item_set = set(texts(item))
            if len(batch) < batch_size and seen.isdisjoint(item_set):
                batch.append(item)
                seen |= item_set
            else:
                deferred.append(item)
        return batch, deferred

    for planned in plan:
        key = planned.dataset
        batch, deferred = fill(pending.get(key, []) + list(planned.items))
        if len(batch) == batch_size:
            out.append(PlannedBatch(tuple(batch)))
            pending[key] = deferred
        else:
            pending[key] = batch + deferred
    for key in list(pending):  # the deferred items, while they still fill whole batches
        while len(pending[key]) >= batch_size:
            batch, deferred = fill(pending[key])
            if len(batch) < batch_size:
                break
            out.append(PlannedBatch(tuple(batch)))
            pending[key] = deferred
    return out

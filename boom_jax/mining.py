"""Hard-negative mining and teacher scoring with an embedding model: exact top-k search in chunks,
negatives sampled from a rank range, filtered by score (library for ``python -m boom_jax.mine`` and
``python -m boom_jax.score``; layer 3: it uses models/ and data/, entry points use it).

Ranks are positions in the exact cosine ranking of the WHOLE corpus for a query (0 = the most
similar text), as FlagEmbedding's ``range_for_sampling="10-210"`` (ranks 10..209; it then drops the
positives and the query's own text and samples the negatives at random). The score filters are
sentence-transformers' ``mine_hard_negatives`` options with the same meaning: ``absolute_margin``
drops candidates with ``score + margin > min positive score``, ``relative_margin`` drops ``score >
min_pos - |min_pos| * margin``, ``max_score`` / ``min_score`` drop scores above / below; and
``sampling_strategy`` "top" takes the highest remaining candidates, "random" draws them uniformly
(seeded; FlagEmbedding's way). A query left with fewer candidates than ``num_negatives`` keeps what
remains (``MiningStats.short`` counts them).

Memory: the search holds the two embedding matrices plus the temporaries of one ``query_chunk x
(k + corpus_chunk)`` block of scores and indices (:func:`search_memory_bytes`, an upper bound).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from boom_jax.data.records import Example
from boom_jax.data.sampling import dataset_rng

SAMPLING_STRATEGIES = ("top", "random")


@dataclasses.dataclass(frozen=True)
class MiningOptions:
    """How negatives are chosen (see the module docstring). ``range_max`` None = range_min +
    num_negatives (x 10 when a score filter is set) + the most positives of a query, as
    sentence-transformers derives it."""

    num_negatives: int = 15
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling_strategy: str = "top"
    seed: int = 0
    output_scores: bool = False

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives={self.num_negatives} must be >= 1")
        if self.range_min < 0:
            raise ValueError(f"range_min={self.range_min} must be >= 0")
        if self.range_max is not None and self.range_max - self.range_min < self.num_negatives:
            raise ValueError(f"range {self.range_min}-{self.range_max} holds fewer than num_negatives="
                             f"{self.num_negatives} ranks")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"sampling_strategy={self.sampling_strategy!r}: expected one of {SAMPLING_STRATEGIES}")

    @property
    def filtered(self) -> bool:
        return any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score, self.min_score))

    def resolved_range_max(self, max_positives: int) -> int:
        if self.range_max is not None:
            return self.range_max
        return self.range_min + self.num_negatives * (10 if self.filtered else 1) + max_positives


def parse_range(text: str) -> tuple[int, int]:
    """"10-210" -> (10, 210) (FlagEmbedding's range_for_sampling)."""
    try:
        low, high = (int(x) for x in text.split("-"))
    except ValueError:
        raise ValueError(f"range_for_sampling={text!r}: expected MIN-MAX, e.g. 10-210") from None
    if not 0 <= low < high:
        raise ValueError(f"range_for_sampling={text!r}: expected 0 <= MIN < MAX")
    return low, high


# Bytes per element of a search block alive at once: the scores (float32), their concatenation with the
# kept top-k (float32), the concatenated indices (int64), the negated scores and the argpartition
# result (float32 + int64), the tie mask (bool).
BLOCK_BYTES_PER_ELEMENT = 4 + 4 + 8 + 4 + 8 + 1


def search_memory_bytes(num_queries: int, num_corpus: int, dim: int, k: int, query_chunk: int,
                        corpus_chunk: int) -> int:
    """An upper bound of the search's working set: both embedding matrices (float32), the temporaries of
    one ``query_chunk x (k + corpus_chunk)`` block (:data:`BLOCK_BYTES_PER_ELEMENT`) and the kept top-k
    (score + index) of every query."""
    block = min(query_chunk, num_queries) * (k + min(corpus_chunk, num_corpus)) * BLOCK_BYTES_PER_ELEMENT
    return 4 * dim * (num_queries + num_corpus) + block + num_queries * k * (4 + 8)


def _order(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row by (score descending, corpus index ascending)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition may split ties at the boundary arbitrarily: widen to every column tied with the k-th
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        candidates = scores >= kth
        if candidates.sum(axis=1).max() > k:  # rare: resolve ties by index over the tied rows
            rows = []
            for r in range(scores.shape[0]):
                cols = np.flatnonzero(candidates[r])
                cols = cols[np.lexsort((indices[r, cols], -scores[r, cols]))][:k]
                rows.append(cols)
            part = np.stack(rows)
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    s = np.take_along_axis(scores, part, axis=1)
    i = np.take_along_axis(indices, part, axis=1)
    order = np.lexsort((i, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def top_k_search(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    k: int,
    query_chunk: int = 1024,
    corpus_chunk: int = 65536,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for normalized rows): (scores float32 [Q, k'], corpus
    indices int64 [Q, k']) sorted by score descending, ties by index; k' = min(k, corpus size).
    Memory-bounded by ``query_chunk x (k + corpus_chunk)`` (see :func:`search_memory_bytes`)."""
    q = np.asarray(query_emb, np.float32)
    c = np.asarray(corpus_emb, np.float32)
    k = min(k, c.shape[0])
    out_s = np.empty((q.shape[0], k), np.float32)
    out_i = np.empty((q.shape[0], k), np.int64)
    starts = range(0, q.shape[0], query_chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="top-k search", unit="chunk")
    for start in starts:
        block = q[start:start + query_chunk]
        best_s = np.empty((block.shape[0], 0), np.float32)
        best_i = np.empty((block.shape[0], 0), np.int64)
        for c_start in range(0, c.shape[0], corpus_chunk):
            scores = block @ c[c_start:c_start + corpus_chunk].T
            idx = np.broadcast_to(np.arange(c_start, c_start + scores.shape[1], dtype=np.int64), scores.shape)
            best_s, best_i = _order(np.concatenate([best_s, scores], 1), np.concatenate([best_i, idx], 1), k)
        out_s[start:start + block.shape[0]] = best_s
        out_i[start:start + block.shape[0]] = best_i
    return out_s, out_i


@dataclasses.dataclass
class MiningStats:
    """Counts of one mining run (printed by the entry point)."""

    queries: int = 0
    negatives: int = 0
    short: int = 0  # queries left with fewer than num_negatives candidates
    filtered: int = 0  # in-range candidates dropped by the score filters

    def summary(self) -> str:
        return (f"mined {self.negatives} negatives for {self.queries} queries; {self.short} queries got fewer "
                f"than asked; {self.filtered} in-range candidates dropped by the score filters")


def select_negatives(
    scores: np.ndarray,
    indices: np.ndarray,
    positives: Sequence[Iterable[int]],
    positive_scores: Sequence[np.ndarray],
    options: MiningOptions,
    excluded: Sequence[Iterable[int]] | None = None,
    range_max: int | None = None,
    stats: MiningStats | None = None,
) -> list[list[tuple[int, float]]]:
    """Per query, the chosen (corpus index, score) pairs, best first, from its ranked candidates.

    ``scores`` / ``indices`` [Q, >= range_max] are the search results (rank r = column r);
    ``positives`` the corpus indices of each query's positives, ``positive_scores`` their scores;
    ``excluded`` further indices per query (e.g. the query's own text)."""
    stats = stats if stats is not None else MiningStats()
    high = range_max if range_max is not None else options.resolved_range_max(max(len(list(p)) for p in positives))
    out = []
    for row in range(scores.shape[0]):
        rng = dataset_rng(options.seed, "mine", row)
        ban = set(positives[row]) | (set(excluded[row]) if excluded is not None else set())
        s = scores[row, options.range_min:high]
        i = indices[row, options.range_min:high]
        keep = np.array([int(j) not in ban for j in i], bool)
        before = int(keep.sum())
        min_pos = float(np.min(positive_scores[row]))
        if options.absolute_margin is not None:
            keep &= ~(s + options.absolute_margin > min_pos)
        if options.relative_margin is not None:
            keep &= ~(s > min_pos - abs(min_pos) * options.relative_margin)
        if options.max_score is not None:
            keep &= ~(s > options.max_score)
        if options.min_score is not None:
            keep &= ~(s < options.min_score)
        stats.filtered += before - int(keep.sum())
        cand = np.flatnonzero(keep)
        if options.sampling_strategy == "random" and len(cand) > options.num_negatives:
            cand = np.sort(rng.choice(cand, size=options.num_negatives, replace=False))
        cand = cand[: options.num_negatives]
        stats.queries += 1
        stats.negatives += len(cand)
        stats.short += len(cand) < options.num_negatives
        out.append([(int(i[c]), float(s[c])) for c in cand])
    return out


@dataclasses.dataclass(frozen=True)
class MinedExample:
    """An example with its mined negatives (and the scores of its positives and negatives)."""

    example: Example
    neg: tuple[str, ...]
    pos_scores: tuple[float, ...]
    neg_scores: tuple[float, ...]

    def to_record(self, with_scores: bool) -> dict[str, Any]:
        """The standard JSONL record (boom_jax.data.validation) of this example."""
        e = self.example
        record: dict[str, Any] = {"query": e.query, "pos": list(e.pos), "neg": list(self.neg)}
        if e.prompt:
            record["prompt"] = e.prompt
        if e.task_type:
            record["type"] = e.task_type
        if with_scores:
            record["pos_scores"] = list(self.pos_scores)
            record["neg_scores"] = list(self.neg_scores)
        return record


def corpus_of(examples: Sequence[Example], corpus: Sequence[str] | None = None) -> list[str]:
    """The distinct texts to mine from, in first-appearance order: ``corpus`` (when given) or every
    positive and negative of the examples; the positives are always included."""
    texts = list(corpus) if corpus is not None else [t for e in examples for t in (*e.pos, *e.neg)]
    return list(dict.fromkeys([*texts, *(p for e in examples for p in e.pos)]))


def mine_hard_negatives(
    encoder: Any,
    examples: Sequence[Example],
    options: MiningOptions = MiningOptions(),
    corpus: Sequence[str] | None = None,
    batch_size: int = 32,
    query_chunk: int = 1024,
    corpus_chunk: int = 65536,
    query_prompt: str | None = None,
    query_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    progress: bool = True,
    stats: MiningStats | None = None,
) -> list[MinedExample]:
    """Mine negatives for ``examples`` with ``encoder`` (anything with ``encode(texts, prompt=,
    prompt_name=, batch_size=, show_progress_bar=)`` returning normalized rows, e.g. models.Encoder).
    Each query is encoded with its example's prompt prepended (as in training)."""
    if not examples:
        raise ValueError("mine_hard_negatives: no examples")
    texts = corpus_of(examples, corpus)
    position = {t: i for i, t in enumerate(texts)}
    corpus_emb = _normalized(encoder.encode(texts, prompt=corpus_prompt, prompt_name=corpus_prompt_name,
                                            batch_size=batch_size, show_progress_bar=progress))
    queries = [e.prompt + e.query for e in examples]
    query_emb = _normalized(encoder.encode(queries, prompt=query_prompt, prompt_name=query_prompt_name,
                                           batch_size=batch_size, show_progress_bar=progress))
    positives = [[position[p] for p in e.pos] for e in examples]
    high = options.resolved_range_max(max(len(p) for p in positives))
    scores, indices = top_k_search(query_emb, corpus_emb, high, query_chunk, corpus_chunk, progress)
    pos_scores = [corpus_emb[p] @ query_emb[row] for row, p in enumerate(positives)]
    excluded = [[position[e.query]] if e.query in position else [] for e in examples]
    chosen = select_negatives(scores, indices, positives, pos_scores, options, excluded, high, stats)
    return [
        MinedExample(e, tuple(texts[j] for j, _ in picks), tuple(float(s) for s in ps),
                     tuple(s for _, s in picks))
        for e, picks, ps in zip(examples, chosen, pos_scores)
    ]


def teacher_scores(
    encoder: Any,
    examples: Sequence[Example],
    batch_size: int = 32,
    query_prompt: str | None = None,
    query_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    progress: bool = True,
) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """(pos_scores, neg_scores) per example: the encoder's cosine of the query with each positive and
    negative (an embedding model as teacher). Every distinct text is encoded once."""
    texts = list(dict.fromkeys(t for e in examples for t in (*e.pos, *e.neg)))
    position = {t: i for i, t in enumerate(texts)}
    passage_emb = _normalized(encoder.encode(texts, prompt=corpus_prompt, prompt_name=corpus_prompt_name,
                                             batch_size=batch_size, show_progress_bar=progress))
    query_emb = _normalized(encoder.encode([e.prompt + e.query for e in examples], prompt=query_prompt,
                                           prompt_name=query_prompt_name, batch_size=batch_size,
                                           show_progress_bar=progress))
    out = []
    for row, e in enumerate(examples):
        score = lambda ts: tuple(float(s) for s in passage_emb[[position[t] for t in ts]] @ query_emb[row])  # noqa: E731
        out.append((score(e.pos), score(e.neg) if e.neg else ()))
    return out


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

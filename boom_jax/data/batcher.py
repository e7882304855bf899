"""The batcher: a schedule's plan turned into fixed-shape numpy batches, resumable and multi-host aware.

Each batch is a dict
  query_ids, query_mask      int32 [b, Tq]       (queries with their instruction prepended)
  passage_ids, passage_mask  int32 [b * G, Tp]   (group layout: for each query pos, neg1 .. neg{G-1})
  dataset_id                 int                 (position of the batch's dataset in `datasets`; -1 mixed;
                                                  also under the alias "dataset_index")
  in_batch_negatives         bool                (False when any dataset of the batch turns them off)
where b = batch_size / process_count (this host's contiguous slice of the global batch) and Tq, Tp are
length buckets chosen from the whole global batch, so every host yields the same shapes.

With `packing=True` each side is packed instead (boom_jax/packing.py), this host's slice cut into
`pack_shards` equal parts (its data-parallel shards), each packed into its own rows:
  query_ids, query_segments      int32 [Rq, Lq]   (segment ids: 0 pad, 1..Sq the texts of a row)
  query_lengths                  int32 [Rq, Sq]   (tokens per segment slot; its shape carries Sq)
  query_index                    int32 [b]        (query i's slot in the model's [Rq, Sq, D] output,
                                                   local_row * Sq + slot within its shard)
  passage_ids, passage_segments, passage_lengths, passage_index   the same for the b * G passages
  pack_shards                    int              (shards the rows and indices are laid out for)
Lq, Lp are the row budgets (`pack_length`, default each side's max length), or with `pack_adaptive` the
smallest length bucket up to that budget holding the side's longest text in the GLOBAL batch (so every
host yields the same widths; short texts then never pay attention over a wide row); Sq, Sp are fixed per
row length and Rq, Rp = pack_shards x a row bucket, so a handful of shapes compile.

Texts are tokenized lazily, one global batch at a time, with batched calls of the (fast) tokenizers, or,
with a `token_cache_dir`, all at once into persistent token stores (`token_store.py`) that batches are
then looked up from.
Which positive and which negatives a group gets is drawn per batch from (seed, epoch, position), so a
restored batcher yields exactly the same remaining batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from boom_jax.packing import default_max_segments, pack_padded, row_width, width_buckets
from boom_jax.data.no_duplicates import item_texts, no_duplicates_plan
from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.sampling import dataset_rng
from boom_jax.data.schedules import PlannedBatch, make_plan
from boom_jax.data.token_store import MAX_CHARS_PER_TOKEN, TokenStore, cap_chars, load_or_build_store  # noqa: F401

Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
STATE_KEYS = ("epoch", "position", "seed", "schedule", "batch_size")


def query_text(example: Example) -> str:
    """The text the model sees for a query: its instruction (if any) followed by the query."""
    return example.prompt + example.query if example.prompt else example.query


def choose_passages(dataset: TrainDataset, position: int, num_negatives: int, rng: np.random.Generator) -> list[str]:
    """The group of example `position`: one positive (drawn among its positives), then `num_negatives`.

    Enough negatives: drawn without replacement. Fewer: all of them, shuffled and cycled. None: the
    first positives of other examples of the same dataset, drawn at random (random negatives).
    """
    return choose_group(dataset, position, num_negatives, rng)[0]


def choose_group(dataset: TrainDataset, position: int, num_negatives: int,
                 rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """(texts, teacher scores) of the group :func:`choose_passages` draws (the same draws): each text's
    pos_scores / neg_scores entry, NaN where the example has none (random negatives never have one)."""
    example = dataset.examples[position]
    nan = float("nan")
    pos_i = int(rng.integers(len(example.pos))) if len(example.pos) > 1 else 0
    pos, pos_score = example.pos[pos_i], (example.pos_scores[pos_i] if example.pos_scores else nan)
    if num_negatives == 0:
        return [pos], [pos_score]
    neg = example.neg
    neg_score = (lambda i: example.neg_scores[i]) if example.neg_scores else (lambda i: nan)
    if len(neg) >= num_negatives:
        chosen = [int(i) for i in rng.choice(len(neg), size=num_negatives, replace=False)]
    elif neg:
        order = rng.permutation(len(neg))
        chosen = [int(order[i % len(neg)]) for i in range(num_negatives)]
    else:
        if len(dataset) < 2:
            raise ValueError(f"dataset {dataset.name!r}: example {example.index} has no negatives and the dataset "
                             f"has no other example to draw random negatives from")
        others = rng.integers(len(dataset) - 1, size=num_negatives)
        others = others + (others >= position)  # skip the example itself
        return [pos, *(dataset.examples[int(j)].pos[0] for j in others)], [pos_score] + [nan] * num_negatives
    return [pos, *(neg[i] for i in chosen)], [pos_score, *(neg_score(i) for i in chosen)]


def duplicate_masks(positives: Sequence[Sequence[str]], queries: Sequence[str],
                    passages: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(false_negatives [B, B * G], duplicate_queries [B, B]) of a global batch in group layout:
    passage j's text is one of query i's positives (its own positive column excluded), and query j has
    query i's text (j != i). The masks the loss applies with loss.mask_duplicates."""
    ids: dict[str, int] = {}
    passage_ids = np.asarray([ids.setdefault(t, len(ids)) for t in passages], np.int64)
    b, n = len(queries), len(passages)
    group = n // b
    false_negatives = np.zeros((b, n), bool)
    for i, pos in enumerate(positives):
        known = [ids[t] for t in pos if t in ids]
        if known:
            false_negatives[i] = np.isin(passage_ids, known)
    false_negatives[np.arange(b), np.arange(b) * group] = False
    query_ids = np.unique(np.asarray(queries, dtype=object), return_inverse=True)[1].reshape(-1)
    duplicate_queries = query_ids[:, None] == query_ids[None, :]
    np.fill_diagonal(duplicate_queries, False)
    return false_negatives, duplicate_queries


def batch_tokens(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(real tokens, token positions the step computes) of a batch, packed or padded."""
    real = total = 0
    for side in ("query", "passage"):
        marks = batch[f"{side}_segments"] if f"{side}_segments" in batch else batch[f"{side}_mask"]
        real += int(np.count_nonzero(np.asarray(marks)))
        total += int(np.size(marks))
    return real, total


class TokenCache:
    """Token ids of recently seen texts (negatives recur across groups, every text across epochs).

    Bounded: past `max_entries` the oldest entries are dropped. Used with tokenizers that expose
    `token_ids(texts)` and `pad(ids)` (TextTokenizer); the batches are identical with or without it.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._ids: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def tokenize(self, tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._ids))
        fresh = dict(zip(missing, (np.asarray(r, dtype=np.int32) for r in tokenizer.token_ids(missing)))) if missing else {}
        rows = [fresh[t] if t in fresh else self._ids[t] for t in texts]
        self._ids.update(fresh)
        while len(self._ids) > self.max_entries:
            del self._ids[next(iter(self._ids))]
        return tokenizer.pad(rows)


def tokenize(tokenizer: Tokenize, texts: list[str], cache: TokenCache | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of texts: very long texts capped first, through the cache when the tokenizer allows."""
    texts = cap_chars(texts, tokenizer)
    if cache is not None and hasattr(tokenizer, "token_ids") and hasattr(tokenizer, "pad"):
        return cache.tokenize(tokenizer, texts)
    return tokenizer(texts)


class Batcher:
    """Iterates fixed-shape batches of a schedule over `num_epochs` epochs (None = forever).

    `query_tokenizer` / `passage_tokenizer`: callables texts -> (ids, mask) padded to length buckets
    (e.g. `boom_jax.tokenization.TextTokenizer` with query_max_len / passage_max_len).
    `group_size`: 1 positive + (group_size - 1) negatives, unless a dataset sets `hard_negatives`.
    `token_cache_size`: texts whose token ids are kept (per tokenizer; 0 disables the cache).
    `token_cache_dir`: when given, every distinct query and passage text is tokenized once up front into a
    `TokenStore` saved in (and on later runs loaded from) this folder; batches are then only looked up
    and padded, and are identical to those without it. None: tokenize lazily, batch by batch.
    `packing`: pack each side into rows (module docstring); `pack_length` the row budget in tokens (None:
    each tokenizer's max_length), `pack_segments` the segment slots per row (None: one per 8 tokens, at
    most the texts of a shard), `pack_shards` the data-parallel shards of this host's slice (each packs its
    own texts), `pack_row_multiple` what row counts per shard are a multiple of (the gradient cache's
    chunk count), `pack_row_buckets` row-count buckets per doubling, `pack_adaptive` each side's row length
    chosen per batch (the smallest of the tokenizer's length buckets up to the budget holding the batch's
    longest text; False: always the budget).
    `teacher_scores`: batches carry "teacher_scores" float32 [b * G] (each passage's pos_scores / neg_scores
    entry, NaN where there is none) for the distillation losses. `duplicate_masks`: batches carry
    "false_negatives" bool [b, B * G] and "duplicate_queries" bool [b, B] (see :func:`duplicate_masks`;
    rows are this host's queries, columns the global batch). `no_duplicates`: every batch of the plan
    refilled so that no query or positive text appears twice in it (boom_jax/data/no_duplicates.py).
    """

    def __init__(
        self,
        datasets: Sequence[TrainDataset],
        query_tokenizer: Tokenize,
        passage_tokenizer: Tokenize,
        batch_size: int,
        group_size: int = 8,
        schedule: str = "bls",
        schedule_options: Mapping[str, Any] | None = None,
        seed: int = 0,
        num_epochs: int | None = 1,
        process_index: int = 0,
        process_count: int = 1,
        token_cache_size: int = 200_000,
        token_cache_dir: str | None = None,
        show_progress: bool = True,
        packing: bool = False,
        pack_length: int | None = None,
        pack_segments: int | None = None,
        pack_shards: int = 1,
        pack_row_multiple: int = 1,
        pack_row_buckets: int = 4,
        pack_adaptive: bool = False,
        teacher_scores: bool = False,
        duplicate_masks: bool = False,
        no_duplicates: bool = False,
    ):
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be an int >= 1 (1 positive + negatives), got {group_size!r}")
        if not isinstance(process_count, int) or process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
        if batch_size % process_count:
            raise ValueError(f"global batch_size {batch_size} must be divisible by process_count {process_count}")
        self.packing = bool(packing)
        if self.packing:
            local = batch_size // process_count
            if not isinstance(pack_shards, int) or pack_shards < 1 or local % pack_shards:
                raise ValueError(f"pack_shards={pack_shards!r}: this host's {local} queries must split evenly into "
                                 f"its data-parallel shards")
            if pack_row_multiple < 1 or pack_row_buckets < 1:
                raise ValueError(f"pack_row_multiple={pack_row_multiple} and pack_row_buckets={pack_row_buckets} "
                                 f"must be >= 1")
        self.pack_shards = int(pack_shards)
        self.teacher_scores = bool(teacher_scores)
        self.duplicate_masks = bool(duplicate_masks)
        self.no_duplicates = bool(no_duplicates)
        self.pack_row_multiple = int(pack_row_multiple)
        self.pack_row_buckets = int(pack_row_buckets)
        self.pack_adaptive = bool(pack_adaptive)
        self._pack_length = pack_length
        self._pack_segments = pack_segments
        self.datasets = list(datasets)
        self._by_name = {d.name: d for d in self.datasets}
        self._ids = {d.name: i for i, d in enumerate(self.datasets)}
        self.query_tokenizer = query_tokenizer
        self.passage_tokenizer = passage_tokenizer
        self.batch_size = batch_size
        self.group_size = group_size
        self.schedule = schedule
        self.schedule_options = dict(schedule_options or {})
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.process_index = process_index
        self.process_count = process_count
        self.epoch = 0
        self.position = 0
        self._query_cache = TokenCache(token_cache_size) if token_cache_size > 0 else None
        self._passage_cache = TokenCache(token_cache_size) if token_cache_size > 0 else None
        self._query_store: TokenStore | None = None
        self._passage_store: TokenStore | None = None
        if token_cache_dir is not None:
            self._query_store, self._passage_store = self._load_stores(token_cache_dir, show_progress)
        self._plan_epoch: int | None = None
        self._plan: list[PlannedBatch] = []
        if self.steps_per_epoch == 0:
            sizes = {d.name: len(d) for d in self.datasets}
            raise ValueError(f"schedule {schedule!r} makes no full batch of {batch_size} from datasets {sizes}")

    def _load_stores(self, cache_dir: str, progress: bool) -> tuple[TokenStore | None, TokenStore | None]:
        """Token stores of every query and every passage text (None for a tokenizer that is not a
        TextTokenizer, which then tokenizes batch by batch)."""
        def usable(tok: Any) -> bool:
            return all(hasattr(tok, a) for a in ("token_ids", "max_length", "buckets", "pad_id", "tokenizer"))

        examples = [e for d in self.datasets for e in d.examples]
        queries = passages = None
        if usable(self.query_tokenizer):
            queries = load_or_build_store((query_text(e) for e in examples), self.query_tokenizer, cache_dir,
                                          progress, desc="tokenizing queries")
        if usable(self.passage_tokenizer):
            passages = load_or_build_store((t for e in examples for t in (*e.pos, *e.neg)), self.passage_tokenizer,
                                           cache_dir, progress, desc="tokenizing passages")
        return queries, passages

    def _tokenize(self, texts: list[str], tokenizer: Tokenize, store: TokenStore | None,
                  cache: TokenCache | None) -> tuple[np.ndarray, np.ndarray]:
        return store.tokenize(texts) if store is not None else tokenize(tokenizer, texts, cache)

    # ---- plan and state -------------------------------------------------------------------------
    def plan(self, epoch: int) -> list[PlannedBatch]:
        """The (cached) plan of one epoch."""
        if self._plan_epoch != epoch:
            self._plan = make_plan(self.schedule, self.datasets, self.batch_size, self.seed, epoch,
                                   **self.schedule_options)
            if self.no_duplicates:
                self._plan = no_duplicates_plan(self._plan, item_texts(self._by_name, query_text), self.batch_size)
            self._plan_epoch = epoch
        return self._plan

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan(self.epoch))

    @property
    def total_steps(self) -> int | None:
        return None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch

    def state(self) -> dict:
        """JSON-able position: the next batch to yield is batch `position` of epoch `epoch`."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "schedule": self.schedule,
                "batch_size": self.batch_size}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a `state()`; the seed, schedule and batch size must match this batcher's."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"batcher state misses key(s) {missing}")
        for key in ("seed", "schedule", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"batcher state has {key}={state[key]!r} but this batcher has {getattr(self, key)!r}; "
                                 f"resume with the same data settings")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self.plan(epoch)):
            raise ValueError(f"batcher state position {position} of epoch {epoch} is outside the plan")
        self.epoch, self.position = epoch, position

    # ---- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.position >= len(self.plan(self.epoch)):
            self.epoch += 1
            self.position = 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        batch = self.build(self.plan(self.epoch)[self.position], self.epoch, self.position)
        self.position += 1
        return batch

    def _group_size_of(self, dataset: TrainDataset) -> int:
        return self.group_size if dataset.hard_negatives is None else 1 + dataset.hard_negatives

    def build(self, planned: PlannedBatch, epoch: int, position: int) -> dict:
        """The batch (this host's slice) of one planned global batch."""
        rng = dataset_rng(self.seed, "passages", epoch, position)
        names = [name for name, _ in planned.items]
        group_sizes = {self._group_size_of(self._by_name[n]) for n in set(names)}
        if len(group_sizes) > 1:
            raise ValueError(f"a batch mixes datasets with different group sizes {sorted(group_sizes)}; give the "
                             f"mixed datasets the same hard_negatives")
        group = group_sizes.pop()
        queries, passages, scores = [], [], []
        for name, i in planned.items:
            dataset = self._by_name[name]
            queries.append(query_text(dataset.examples[i]))
            texts, group_scores = choose_group(dataset, i, group - 1, rng)
            passages.extend(texts)
            scores.extend(group_scores)
        query_ids, query_mask = self._tokenize(queries, self.query_tokenizer, self._query_store, self._query_cache)
        passage_ids, passage_mask = self._tokenize(passages, self.passage_tokenizer, self._passage_store,
                                                   self._passage_cache)
        b = self.batch_size // self.process_count
        q = slice(self.process_index * b, (self.process_index + 1) * b)
        p = slice(self.process_index * b * group, (self.process_index + 1) * b * group)
        dataset = planned.dataset
        dataset_id = self._ids[dataset] if dataset is not None else -1
        if self.packing:
            sides = {"query": self._pack(query_ids[q], query_mask[q], self.query_tokenizer, query_mask),
                     "passage": self._pack(passage_ids[p], passage_mask[p], self.passage_tokenizer, passage_mask)}
            out = {f"{side}_{field}": value for side, packed in sides.items() for field, value in packed.items()}
            out["pack_shards"] = self.pack_shards
        else:
            out = {
                "query_ids": np.ascontiguousarray(query_ids[q], dtype=np.int32),
                "query_mask": np.ascontiguousarray(query_mask[q], dtype=np.int32),
                "passage_ids": np.ascontiguousarray(passage_ids[p], dtype=np.int32),
                "passage_mask": np.ascontiguousarray(passage_mask[p], dtype=np.int32),
            }
        if self.teacher_scores:
            out["teacher_scores"] = np.asarray(scores[p], np.float32)
        if self.duplicate_masks:
            positives = [self._by_name[name].examples[i].pos for name, i in planned.items]
            false_negatives, duplicate_queries = duplicate_masks(positives, queries, passages)
            out["false_negatives"], out["duplicate_queries"] = false_negatives[q], duplicate_queries[q]
        return {
            **out,
            "dataset_id": dataset_id,
            "dataset_index": dataset_id,  # alias of dataset_id
            "in_batch_negatives": all(self._by_name[n].in_batch_negatives for n in set(names)),
        }

    def pack_shape(self, tokenizer: Tokenize, texts_per_shard: int, longest: int | None = None) -> tuple[int, int]:
        """(row length, segment slots) of a packed side: `pack_length` or the tokenizer's max_length (with
        `pack_adaptive` and `longest` given: the smallest of the tokenizer's buckets up to it that holds
        `longest` tokens), and `pack_segments` or one slot per 8 tokens (at most the texts of a shard)."""
        length = self._pack_length or getattr(tokenizer, "max_length", None)
        if not length:
            raise ValueError("packing needs pack_length (the row budget) for a tokenizer without max_length")
        max_len = getattr(tokenizer, "max_length", None)
        if max_len and length < max_len:
            raise ValueError(f"pack_length={length} is below the tokenizer's max_length {max_len}: a text must fit "
                             f"in one row")
        if self.pack_adaptive and longest is not None:
            length = row_width(int(longest), width_buckets(getattr(tokenizer, "buckets", ()), int(length)))
        return int(length), int(self._pack_segments or default_max_segments(int(length), texts_per_shard))

    def _pack(self, ids: np.ndarray, mask: np.ndarray, tokenizer: Tokenize,
              global_mask: np.ndarray) -> dict[str, np.ndarray]:
        per_shard = ids.shape[0] // self.pack_shards
        longest = int(np.asarray(global_mask).astype(bool).sum(axis=1).max(initial=1))
        length, segments = self.pack_shape(tokenizer, per_shard, longest)
        return pack_padded(ids, mask, length, segments, shards=self.pack_shards,
                           pad_id=int(getattr(tokenizer, "pad_id", 0)), per_octave=self.pack_row_buckets,
                           row_multiple=self.pack_row_multiple)


class PrefetchingBatcher:
    """Builds the next `depth` batches of a Batcher in a background thread (tokenization overlaps the
    train step; the fast tokenizers release the GIL). `state()` is the position after the last batch
    handed out, so checkpoints resume exactly as with the plain Batcher."""

    def __init__(self, batcher: Batcher, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.batcher = batcher
        self._state = batcher.state()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for batch in self.batcher:
                item = (batch, self.batcher.state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:  # wait for the consumer
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(StopIteration)
        except BaseException as error:  # surface errors (e.g. a tokenizer failure) in the consumer
            self._queue.put(error)

    def __iter__(self) -> "PrefetchingBatcher":
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if item is StopIteration:
            self._queue.put(StopIteration)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def state(self) -> dict:
        return dict(self._state)

    def close(self) -> None:
        """Stops the background thread (call before dropping an unfinished iterator)."""
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def steps_per_epoch(self) -> int:
        return self.batcher.steps_per_epoch

    @property
    def total_steps(self) -> int | None:
        return self.batcher.total_steps

"""Sequence packing: many texts laid end to end in rows of a token budget, with segment ids (pure numpy).

A packed side of a batch (queries or passages) is
  ids       int32 [R, L]   token ids, texts contiguous from the row's start, padding at the end
  segments  int32 [R, L]   0 = padding, j = the j-th text of the row (1 .. S)
  lengths   int32 [R, S]   tokens of each segment slot (0 = empty slot); its shape carries S
  index     int32 [N]      per text, in input order: where its embedding lands in the model's [R, S, D]
                           output, as ``local_row * S + slot`` within its shard (see below)
The encoders take ``segments`` where they took a 0/1 mask (a 0/1 mask is one segment per row) and with
``num_segments=S`` return [R, S, D], slot ``j - 1`` holding segment ``j``.

Shards: the texts are cut into ``shards`` contiguous, equal parts and each part is packed into its own
``R / shards`` rows, so rows ``[k * R/shards, (k + 1) * R/shards)`` hold exactly the texts of part ``k``
and part ``k``'s indices point into those rows only (counted from the part's first row). With the batch's
leading axis split over devices, every device then embeds exactly its own texts and gathers them locally,
under jit sharding and inside shard_map alike.

Shapes are fixed per budget: ``S`` is fixed per row length and the row count is the smallest bucket that holds
the fullest shard (a few buckets per doubling, rounded to ``row_multiple``), so only a handful of programs
compile. Packing is first-fit decreasing (longest first, ties by input order): deterministic, so a resumed
run packs exactly as an uninterrupted one.

Row length: a fixed budget, or adaptive: the smallest of a few widths (``width_buckets``: the length
buckets up to the budget) that holds the side's longest text (``row_width``). Attention, its mask and the
per-segment pooling cost grow with the row length per token, so a batch of short texts (queries, glosses)
packs into short rows instead of paying for the budget's width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

SIDE_FIELDS = ("ids", "segments", "lengths", "index")


def default_max_segments(row_length: int, texts_per_shard: int) -> int:
    """Segment slots per row when the config leaves them open: one per 8 tokens of the row (no real text
    is shorter on average), and never more than the texts a shard holds."""
    return max(1, min(texts_per_shard, row_length // 8))


def row_buckets(limit: int, per_octave: int = 4, multiple: int = 1) -> tuple[int, ...]:
    """Row counts a packed side may take, up to ``limit`` (rounded up to ``multiple``): ``per_octave``
    steps per doubling (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20 ... for 4), each a multiple of
    ``multiple``. At most 1 / per_octave of the rows are padding rows beyond the first octave."""
    if limit < 1 or per_octave < 1 or multiple < 1:
        raise ValueError(f"row_buckets: limit {limit}, per_octave {per_octave}, multiple {multiple} must be >= 1")
    top = -(-limit // multiple) * multiple
    sizes, base = set(), 1
    while base < top:
        for j in range(per_octave):
            sizes.add(-(-math.ceil(base * (1 + j / per_octave)) // multiple) * multiple)
        base *= 2
    sizes.add(top)
    return tuple(sorted(s for s in sizes if s <= top))


def first_fit_decreasing(lengths: np.ndarray, row_length: int,
                         max_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, slot, offset) of each text: longest first (ties by position), each into the first row that
    still has room for it and a free segment slot (a new row when none has), at column ``offset``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > row_length):
        raise ValueError(f"packing: text lengths must be in [1, {row_length}] (the row's token budget); got "
                         f"{int(lengths.min())} .. {int(lengths.max())}")
    order = np.argsort(-lengths, kind="stable")
    free = np.empty(len(lengths), np.int64)  # per open row
    used = np.zeros(len(lengths), np.int64)
    rows = np.empty(len(lengths), np.int64)
    slots = np.empty(len(lengths), np.int64)
    offsets = np.empty(len(lengths), np.int64)
    n_rows = 0
    for i in order:
        n = lengths[i]
        fits = np.flatnonzero((free[:n_rows] >= n) & (used[:n_rows] < max_segments))
        r = int(fits[0]) if fits.size else n_rows
        if r == n_rows:
            free[r], used[r] = row_length, 0
            n_rows += 1
        rows[i], slots[i], offsets[i] = r, used[r], row_length - free[r]
        free[r] -= n
        used[r] += 1
    return rows, slots, offsets


def pack_padded(
    ids: np.ndarray,
    mask: np.ndarray,
    row_length: int,
    max_segments: int,
    shards: int = 1,
    pad_id: int = 0,
    per_octave: int = 4,
    row_multiple: int = 1,
    rows_per_shard: int | None = None,
) -> dict[str, np.ndarray]:
    """Packs texts given as padded (ids, mask) [N, T] rows (either padding side; the real tokens are
    those under the mask, in order) into a packed side (see the module docstring).

    ``rows_per_shard`` fixes the row count (else the bucket of the fullest shard); ``N`` must be
    divisible by ``shards``."""
    ids, mask = np.asarray(ids), np.asarray(mask) > 0
    n = ids.shape[0]
    if shards < 1 or n % shards:
        raise ValueError(f"packing: {n} texts cannot be split into {shards} equal shards")
    if max_segments < 1:
        raise ValueError(f"packing: max_segments={max_segments} must be >= 1")
    per = n // shards
    lengths = mask.sum(axis=1)
    placed = [first_fit_decreasing(lengths[k * per:(k + 1) * per], row_length, max_segments) for k in range(shards)]
    needed = max((int(r.max()) + 1 if r.size else 1) for r, _, _ in placed)
    if rows_per_shard is None:
        rows_per_shard = next(b for b in row_buckets(max(per, 1), per_octave, row_multiple) if b >= needed)
    elif rows_per_shard < needed:
        raise ValueError(f"packing: {needed} rows per shard needed, {rows_per_shard} given")
    row = np.concatenate([r + k * rows_per_shard for k, (r, _, _) in enumerate(placed)]) if n else np.zeros(0, np.int64)
    slot = np.concatenate([s for _, s, _ in placed]) if n else np.zeros(0, np.int64)
    offset = np.concatenate([o for _, _, o in placed]) if n else np.zeros(0, np.int64)
    total_rows = rows_per_shard * shards
    seg_lengths = np.zeros((total_rows, max_segments), np.int32)
    seg_lengths[row, slot] = lengths
    rank = np.cumsum(mask, axis=1) - 1  # position of each real token inside its text
    src_r, src_c = np.nonzero(mask)
    dest_r, dest_c = row[src_r], offset[src_r] + rank[src_r, src_c]
    out_ids = np.full((total_rows, row_length), pad_id, np.int32)
    out_seg = np.zeros((total_rows, row_length), np.int32)
    out_ids[dest_r, dest_c] = ids[src_r, src_c]
    out_seg[dest_r, dest_c] = (slot[src_r] + 1).astype(np.int32)
    index = ((row % rows_per_shard) * max_segments + slot).astype(np.int32)
    return {"ids": out_ids, "segments": out_seg, "lengths": seg_lengths, "index": index}


def fill_rows(token_lists: Sequence[Sequence[int]], row: np.ndarray, slot: np.ndarray, offset: np.ndarray,
              num_rows: int, row_length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, segments) int32 [num_rows, row_length] of texts placed at (row, slot, offset) (rows counted
    from 0 within this block; see :func:`first_fit_decreasing`)."""
    ids = np.full((num_rows, row_length), pad_id, np.int32)
    segments = np.zeros((num_rows, row_length), np.int32)
    for tokens, r, s, o in zip(token_lists, row, slot, offset):
        ids[r, o:o + len(tokens)] = tokens
        segments[r, o:o + len(tokens)] = s + 1
    return ids, segments


def row_width(longest: int, widths: Sequence[int]) -> int:
    """The row length of an adaptive side: the smallest of ``widths`` (ascending) that holds its longest
    text, so short texts never pay attention over a wide row; the widest when none does."""
    if not widths or list(widths) != sorted(widths) or widths[0] < 1:
        raise ValueError(f"packing: widths {tuple(widths)} must be ascending positive row lengths")
    return next((w for w in widths if w >= longest), widths[-1])


def width_buckets(buckets: Sequence[int], limit: int) -> tuple[int, ...]:
    """The row lengths an adaptive side may take: the length ``buckets`` below ``limit``, then ``limit``
    (the row budget), so only a handful of widths (hence compiled shapes) ever occur."""
    return tuple(sorted(b for b in set(buckets) if 0 < b < limit)) + (int(limit),)


ENCODE_TOKENS_PER_TEXT = 64
"""Token positions per text of ``batch_size`` in one encoding forward pass: a call holds
``batch_size x 64`` positions (2048 at 32: about what a sentence-transformers batch of 32 mixed-length texts
pads to, and small enough to stay in a CPU core's caches; measured per token, calls of 4096+ positions
ran slower on XLA:CPU)."""


@dataclasses.dataclass(frozen=True)
class EncodeCall:
    """One forward pass of the packed encoder: ``texts`` (input positions) placed at (``row``, ``slot``,
    ``offset``) of ``rows`` x ``row_length`` packed rows with ``segments`` slots per row."""

    texts: np.ndarray
    row: np.ndarray
    slot: np.ndarray
    offset: np.ndarray
    segments: int
    row_length: int
    rows: int


def call_buckets(limit: int) -> tuple[int, ...]:
    """Row counts of an encoding call: powers of two below ``limit``, then ``limit`` (small inputs stay cheap)."""
    sizes, b = [], 1
    while b < limit:
        sizes.append(b)
        b *= 2
    return tuple(sizes) + (limit,)


def plan_encode_calls(lengths: Sequence[int], batch_size: int, pack_length: int, buckets: Sequence[int],
                      row_multiple: int = 1) -> list[EncodeCall]:
    """The forward passes that embed texts of ``lengths`` tokens, packed.

    Texts of up to ``pack_length`` tokens (or up to the bucket of the longest, if shorter) share rows of
    that bucket; longer ones share rows of the bucket of the longest text (``buckets`` ascending, the last
    the max length), so a long text never widens the rows of the short ones (a cost model of positions x
    (1 + width / 400) over the built-in texts rated this below one width class per bucket, whose 129-256
    token texts fill 256-token rows one each). Each call holds about
    ``batch_size x ENCODE_TOKENS_PER_TEXT`` positions (at least one row); the last call of a width takes
    a smaller row bucket (``call_buckets``), rounded up to ``row_multiple`` (devices). Slots per row are
    fixed per row length (``row_length // 8``), so shapes do not depend on the input size."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch_size < 1 or not lengths.size:
        return []
    short = row_width(min(pack_length, int(lengths.max())), buckets)
    calls = []
    for group in (np.flatnonzero(lengths <= short), np.flatnonzero(lengths > short)):
        if not group.size:
            continue
        row_length = row_width(int(lengths[group].max()), buckets)
        segments = default_max_segments(row_length, row_length)
        row, slot, offset = first_fit_decreasing(lengths[group], row_length, segments)
        num_rows = int(row.max()) + 1
        per_call = max(1, batch_size * ENCODE_TOKENS_PER_TEXT // row_length)
        by_row = np.argsort(row, kind="stable")
        bounds = np.searchsorted(row[by_row], np.arange(0, num_rows + per_call, per_call))
        for k, start in enumerate(range(0, num_rows, per_call)):
            local = by_row[bounds[k]:bounds[k + 1]]
            rows = row_width(min(per_call, num_rows - start), call_buckets(per_call))
            calls.append(EncodeCall(group[local], row[local] - start, slot[local], offset[local], segments,
                                    int(row_length), -(-rows // row_multiple) * row_multiple))
    return calls


def pad_packed_rows(side: Mapping[str, np.ndarray], shards: int, rows_per_shard: int, pad_id: int = 0,
                    row_length: int | None = None, max_segments: int | None = None) -> dict:
    """A packed side grown to ``rows_per_shard`` rows per shard (empty rows at the end of every shard's
    block), and to ``row_length`` columns / ``max_segments`` slots (padding at the end of every row, empty
    slots; indices re-laid for the new slot count). Used to give all stacked members one shape."""
    ids = np.asarray(side["ids"])
    have, width = ids.shape[0] // shards, ids.shape[1]
    slots = np.asarray(side["lengths"]).shape[1]
    row_length, max_segments = row_length or width, max_segments or slots
    if (have, width, slots) == (rows_per_shard, row_length, max_segments):
        return dict(side)
    if have > rows_per_shard or width > row_length or slots > max_segments:
        raise ValueError(f"packing: cannot shrink (rows per shard, row length, slots) {(have, width, slots)} to "
                         f"{(rows_per_shard, row_length, max_segments)}")

    def grow(x, fill, columns):
        x = np.asarray(x).reshape((shards, have, x.shape[1]))
        out = np.full((shards, rows_per_shard, columns), fill, x.dtype)
        out[:, :have, :x.shape[2]] = x
        return out.reshape((shards * rows_per_shard, columns))

    index = np.asarray(side["index"])
    index = ((index // slots) * max_segments + index % slots).astype(index.dtype)
    return {"ids": grow(side["ids"], pad_id, row_length), "segments": grow(side["segments"], 0, row_length),
            "lengths": grow(side["lengths"], 0, max_segments), "index": index}


def unpack_reference(side: Mapping[str, np.ndarray], shards: int = 1) -> list[np.ndarray]:
    """The token ids of each text, in input order, read back from a packed side (for checks)."""
    ids, seg, lengths = (np.asarray(side[k]) for k in ("ids", "segments", "lengths"))
    s = lengths.shape[1]
    per = ids.shape[0] // shards
    index = np.asarray(side["index"])
    n = index.shape[0]
    out = []
    for i, flat in enumerate(index):
        shard = i // (n // shards)
        row, slot = shard * per + int(flat) // s, int(flat) % s
        out.append(ids[row][seg[row] == slot + 1])
    return out


__all__ = ["ENCODE_TOKENS_PER_TEXT", "EncodeCall", "SIDE_FIELDS", "call_buckets", "default_max_segments", "fill_rows",
           "first_fit_decreasing", "pack_padded", "pad_packed_rows", "plan_encode_calls", "row_buckets", "row_width",
           "unpack_reference", "width_buckets"]

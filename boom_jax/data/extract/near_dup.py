"""Near-duplicate detection by word n-gram shingles: is a text mostly covered by one text of a reference set?"""

from __future__ import annotations

import collections
from typing import Sequence

from boom_jax.data.extract.text import words


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class NearDuplicateIndex:
    """Index of reference texts; `covered(text)` is the largest share of `text`'s word n-grams found in one of them.

    n-grams shared by more than `max_df` reference texts (boilerplate) are ignored when counting.
    """

    def __init__(self, texts: Sequence[str], n: int = 4, max_df: int = 50):
        self.n = n
        postings: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
        for i, text in enumerate(texts):
            for gram in shingles(text, n):
                postings[gram].append(i)
        self.postings = {g: ids for g, ids in postings.items() if len(ids) <= max_df}

    def covered(self, text: str) -> float:
        grams = shingles(text, self.n)
        if not grams:
            return 0.0
        hits: collections.Counter = collections.Counter()
        for gram in grams:
            hits.update(self.postings.get(gram, ()))
        return max(hits.values(), default=0) / len(grams)

"""BM25 hard-negative mining: rank_bm25's Okapi weights, scored for many queries at once with a sparse matrix."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from rank_bm25 import BM25Okapi

from boom_jax.data.extract.text import words


class Bm25Index:
    """BM25Okapi over `docs`; `search` scores all documents for a batch of queries in one sparse product.

    Scores equal `BM25Okapi.get_scores` (same idf, k1, b); only the loop over documents is vectorized.
    """

    def __init__(self, docs: Sequence[str], max_doc_tokens: int = 256):
        tokenized = [words(doc)[:max_doc_tokens] or ["<empty>"] for doc in docs]
        self.bm25 = BM25Okapi(tokenized)
        self.vocab = {term: i for i, term in enumerate(sorted(self.bm25.idf))}
        rows, cols, vals = [], [], []
        k1, b, avgdl = self.bm25.k1, self.bm25.b, self.bm25.avgdl
        for d, (freqs, length) in enumerate(zip(self.bm25.doc_freqs, self.bm25.doc_len)):
            norm = k1 * (1 - b + b * length / avgdl)
            for term, f in freqs.items():
                rows.append(d)
                cols.append(self.vocab[term])
                vals.append(self.bm25.idf[term] * f * (k1 + 1) / (f + norm))
        self.weights = sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(self.vocab)), dtype=np.float64)

    def scores(self, queries: Sequence[str], max_query_tokens: int = 64) -> np.ndarray:
        """[len(queries), len(docs)] BM25 scores (dense; call in chunks)."""
        rows, cols, vals = [], [], []
        for q, query in enumerate(queries):
            for term in words(query)[:max_query_tokens]:
                if term in self.vocab:
                    rows.append(q)
                    cols.append(self.vocab[term])
                    vals.append(1.0)
        query_matrix = sp.csr_matrix((vals, (rows, cols)), shape=(len(queries), len(self.vocab)))
        return np.asarray((query_matrix @ self.weights.T).todense())

    def search(
        self,
        queries: Sequence[str],
        k: int,
        exclude: Callable[[int, int], bool],
        chunk: int = 256,
        candidates: int = 64,
    ) -> list[list[int]]:
        """For each query, the indices of its `k` best documents for which `exclude(query_i, doc_i)` is False."""
        out = []
        for start in range(0, len(queries), chunk):
            block = self.scores(queries[start : start + chunk])
            n = min(candidates, block.shape[1])
            part = np.argpartition(-block, n - 1, axis=1)[:, :n]
            order = np.argsort(-np.take_along_axis(block, part, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)
            for offset, row in enumerate(top):
                q = start + offset
                picked = [int(d) for d in row if not exclude(q, int(d))][:k]
                out.append(picked)
        return out

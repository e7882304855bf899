"""Hard-negative mining speed and memory: passages per second on this machine, and the search's memory
bound against what it allocates (and against the unchunked score matrix).

  python benchmarks/mine.py [--num_passages=2000] [--num_queries=500] [--k=100] [--query_chunk=128]
                            [--corpus_chunk=512] [--synthetic_corpus=100000]

1. Encoding + search with all-MiniLM-L6-v2 (the JAX Encoder) on built-in texts: passages / s and
   queries / s of boom_jax.mining.mine_hard_negatives' two phases.
2. The exact chunked top-k alone on random unit vectors (width 384) against a large synthetic corpus:
   time, mining.search_memory_bytes (an upper bound), the peak of NumPy allocations (tracemalloc),
   and the peak of the one-matrix search (queries x corpus scores + a full argsort) for comparison.
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_passages", 2000, "Built-in passages encoded.")
flags.DEFINE_integer("num_queries", 500, "Built-in queries encoded and searched.")
flags.DEFINE_integer("k", 100, "Candidates kept per query (range_max).")
flags.DEFINE_integer("query_chunk", 128, "Queries per search block.")
flags.DEFINE_integer("corpus_chunk", 16384, "Corpus rows per search block.")
flags.DEFINE_integer("synthetic_corpus", 100_000, "Rows of the synthetic corpus of part 2.")
flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
flags.DEFINE_integer("max_seq_length", 128, "Tokens per text.")
flags.DEFINE_bool("encode", True, "Run part 1 (encoding with MiniLM); false = the search benchmark only.")


def peak_bytes(fn):
    """(result, seconds, peak traced bytes) of fn()."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main(argv):
    del argv
    if FLAGS.encode:
        encode_and_search()
    search_only()


def encode_and_search():
    from boom_jax.data.builtin import builtin_train_datasets
    from boom_jax.encode import load_encoder
    from boom_jax.mining import top_k_search
    from boom_jax.training.loop import resolve_model_path

    examples = [e for d in builtin_train_datasets() for e in d.examples]
    passages = list(dict.fromkeys(t for e in examples for t in (*e.pos, *e.neg)))[: FLAGS.num_passages]
    queries = [e.query for e in examples][: FLAGS.num_queries]
    encoder = load_encoder(resolve_model_path("builtin:minilm"), max_seq_length=FLAGS.max_seq_length)
    encoder.encode(passages[:256], batch_size=FLAGS.batch_size)  # compile the shapes once
    encoder.encode(queries[:256], batch_size=FLAGS.batch_size)
    start = time.perf_counter()
    corpus = encoder.encode(passages, batch_size=FLAGS.batch_size)
    enc_p = time.perf_counter() - start
    start = time.perf_counter()
    q = encoder.encode(queries, batch_size=FLAGS.batch_size)
    enc_q = time.perf_counter() - start
    _, search_s, _ = peak_bytes(lambda: top_k_search(q, corpus, FLAGS.k, FLAGS.query_chunk, FLAGS.corpus_chunk))
    print(f"MiniLM, max {FLAGS.max_seq_length} tokens, CPU ({os.cpu_count()} cores):")
    print(f"  encode passages: {len(passages) / enc_p:.1f} passages/s ({len(passages)} in {enc_p:.1f} s)")
    print(f"  encode queries:  {len(queries) / enc_q:.1f} queries/s ({len(queries)} in {enc_q:.1f} s)")
    print(f"  top-{FLAGS.k} search over {len(passages)}: {len(queries) / search_s:.0f} queries/s")
    total = enc_p + enc_q + search_s
    print(f"  end to end: {len(passages) / total:.1f} passages/s mined with {len(queries)} queries")


def search_only():
    from boom_jax.mining import search_memory_bytes, top_k_search


    rng = np.random.default_rng(0)
    n, d, nq = FLAGS.synthetic_corpus, 384, FLAGS.num_queries
    c = rng.normal(size=(n, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    qs = c[rng.choice(n, nq, replace=False)] + 0.1 * rng.normal(size=(nq, d)).astype(np.float32)
    (scores, idx), chunked_s, chunked_peak = peak_bytes(
        lambda: top_k_search(qs, c, FLAGS.k, FLAGS.query_chunk, FLAGS.corpus_chunk))

    def one_matrix():
        s = qs @ c.T
        order = np.argsort(-s, axis=1, kind="stable")[:, : FLAGS.k]
        return np.take_along_axis(s, order, axis=1), order

    (s_full, i_full), full_s, full_peak = peak_bytes(one_matrix)
    bound = search_memory_bytes(nq, n, d, FLAGS.k, FLAGS.query_chunk, FLAGS.corpus_chunk)
    inputs = 4 * d * (nq + n)  # the embeddings themselves (allocated before the timed call, not traced)
    mib = 1 / 2**20
    print(f"\nexact top-{FLAGS.k}: {nq} queries x {n} corpus rows x {d} dims (query_chunk {FLAGS.query_chunk}, "
          f"corpus_chunk {FLAGS.corpus_chunk}); same indices as one-matrix search: {bool((idx == i_full).all())}")
    print("| search | seconds | queries/s | peak NumPy allocations (MiB) | bound beyond the inputs (MiB) |")
    print("|---|---|---|---|---|")
    print(f"| chunked | {chunked_s:.2f} | {nq / chunked_s:.0f} | {chunked_peak * mib:.1f} | {(bound - inputs) * mib:.1f} |")
    print(f"| one matrix | {full_s:.2f} | {nq / full_s:.0f} | {full_peak * mib:.1f} | "
          f"{nq * n * 12 * mib:.1f} (scores + argsort) |")
    print(f"memory ratio one matrix / chunked: {full_peak / max(chunked_peak, 1):.1f}x; "
          f"embeddings: {inputs * mib:.1f} MiB")


if __name__ == "__main__":
    app.run(main)

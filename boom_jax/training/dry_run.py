"""Compile-only dry run: lower and compile the REAL train step for a config's mesh and shapes, without
loading any weights, and say whether it fits the target's memory and how much work a step is.

    python -m boom_jax.training.dry_run --config=configs/qwen3_0p6b_bls.py --devices=8 \\
        --device_memory_gb=80 --config.model.path=/models/Qwen3-0.6B      # GPUs: analytic + XLA:CPU
    python -m boom_jax.training.dry_run --config=configs/qwen3_0p6b_bls.py --topology=v5p:2x2x1 \\
        --config.model.path=/models/Qwen3-0.6B                            # TPU v5p-8, compiled for it

Only the model folder's config.json is read. The params are abstract (`jax.eval_shape` of the
model's init, resized by config.model.sizes with random_init); the optimizer state likewise; the
batch is [batch_size, query_max_len] queries and [batch_size * train_group_size, passage_max_len]
passages, split over the mesh's batch axes.

Two targets:
- `--topology=NAME` (v5p:2x2x1, v5e:2x4, v4:2x2x1, v6e:2x2, ...): the step is compiled ahead of time
  for that TPU slice on this host through libtpu's compile-only client (jax.experimental.topologies,
  as MaxText's train_compile.py does). XLA's memory analysis is then the target's own: it is the
  estimate used. Needs libtpu (`pip install "libtpu==0.0.42.1"`, the version that pairs with jax
  0.10.2, or `pip install -e ".[tpu]"`); only one process on a host may hold libtpu at a time.
- otherwise (GPUs, or any backend without an AOT target here): the step is compiled by XLA:CPU on N
  fake devices (the command re-executes itself with XLA_FLAGS=--xla_force_host_platform_device_count=N
  when needed). XLA:CPU's buffer assignment is not a GPU's (it schedules every layer's remat
  recomputation before the backward of an unrolled stack and keeps float32 copies of bfloat16
  tensors), so its figure is printed as an upper bound and the verdict comes from the analytic
  count of boom_jax/training/memory_model.py; an XLA:CPU figure alone never says "DOES NOT FIT".

FLOPs per step are the matmul FLOPs of the traced step with every loop body (gradient-cache chunks,
scanned layers) counted as often as it runs (boom_jax/training/flops.py); XLA's cost analysis,
which counts each loop body once, is printed beside them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from boom_jax import cli
from boom_jax.atomic_io import write_json
from boom_jax.errors import ConfigError
from boom_jax.training import memory_model
from boom_jax.training.flops import traced_flops
from boom_jax.training.model_setup import abstract_model  # noqa: F401 (part of this module's API)
from boom_jax.training.run_setup import build_run, text_lengths
from boom_jax.training.sharding import batch_axes, batch_sharding
from boom_jax.tree_paths import path_string

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
LIBTPU_PIN = "libtpu==0.0.42.1"
LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"


class DryRunError(ConfigError):
    """A dry run that cannot be set up (too many target devices, an unknown topology, no libtpu)."""


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """How libtpu names a TPU generation, its chip configuration and its HBM per device."""

    topology_prefix: str
    device_kind: str
    chip_config: str
    hbm_gib: float


# HBM per device as the TPU documentation gives it (v4 and v5p: one megacore device per chip).
TPU_GENERATIONS: dict[str, TpuGeneration] = {
    "v4": TpuGeneration("v4", "TPU v4", "megacore", 32),
    "v5p": TpuGeneration("v5p", "TPU v5", "megacore", 95),
    "v5e": TpuGeneration("v5e", "TPU v5 lite", "default", 16),
    "v6e": TpuGeneration("v6e", "TPU v6 lite", "default", 32),
}


def parse_topology(name: str) -> tuple[TpuGeneration, tuple[int, ...]]:
    """("v5p:2x2x1") -> (generation, chip grid); an unknown name is an error naming the flag."""
    match = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", name.strip())
    if not match or match.group(1) not in TPU_GENERATIONS:
        raise DryRunError(f"--topology={name!r}: expected GENERATION:AxB[xC] with GENERATION one of "
                          f"{sorted(TPU_GENERATIONS)}, e.g. v5p:2x2x1 (a v5p-8), v5e:2x4, v4:2x2x1, v6e:2x2")
    grid = tuple(int(d) for d in match.group(2).split("x"))
    if any(d < 1 for d in grid):
        raise DryRunError(f"--topology={name!r}: every dimension must be positive")
    return TPU_GENERATIONS[match.group(1)], grid


def tpu_topology_devices(name: str) -> list:
    """The devices of TPU slice `name`, for ahead-of-time compilation on a host without TPUs."""
    generation, grid = parse_topology(name)
    if importlib.util.find_spec("libtpu") is None:
        raise DryRunError(f"--topology={name}: compiling for TPU needs libtpu; install it with "
                          f"pip install \"{LIBTPU_PIN}\" (or pip install -e \".[tpu]\")")
    from jax.experimental import topologies  # lazy: the compile-only TPU client, only with --topology

    # Hosts of up to 2x2 chips (MaxText's layout for these names); libtpu needs the bounds to tile the grid.
    bounds = tuple(min(d, 2) for d in grid[:2]) + (1,)
    try:
        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{generation.topology_prefix}:{'x'.join(map(str, grid))}",
            chip_config_name=generation.chip_config, chips_per_host_bounds=bounds)
    except Exception as err:  # noqa: BLE001 - libtpu reports everything as a runtime error
        if "lockfile" in str(err):
            raise DryRunError(
                f"--topology={name}: another process is using libtpu (only one libtpu process may run on a "
                f"host at a time; its lock is {LIBTPU_LOCKFILE}); wait for that process to end, and remove "
                f"the lockfile only if no such process is left") from None
        raise DryRunError(f"--topology={name}: libtpu cannot describe this slice: {err}") from None
    return list(topology.devices)


def _cpu_devices(num_devices: int | None) -> list:
    available = jax.devices()
    n = len(available) if num_devices is None else int(num_devices)
    if n < 1:
        raise DryRunError(f"num_devices={n} must be positive")
    if n > len(available):
        raise DryRunError(
            f"dry run for {n} devices, but this process sees {len(available)} ({available[0].platform}); start it "
            f"with XLA_FLAGS={DEVICE_COUNT_FLAG}={n} JAX_PLATFORMS=cpu (python -m boom_jax.training.dry_run "
            f"--devices={n} does so by itself)")
    return available[:n]


def batch_lengths(config: ml_collections.ConfigDict, cfg) -> tuple[int, int]:
    """(query length, passage length) of the step: the config's maxima, capped by the architecture."""
    return text_lengths(config, cfg)


def batch_shapes(config: ml_collections.ConfigDict, cfg) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's input shapes at the config's largest lengths (the worst case)."""
    b, g = config.train.batch_size, config.data.train_group_size
    tq, tp = batch_lengths(config, cfg)
    i32 = jnp.int32
    return {"query_ids": jax.ShapeDtypeStruct((b, tq), i32), "query_mask": jax.ShapeDtypeStruct((b, tq), i32),
            "passage_ids": jax.ShapeDtypeStruct((b * g, tp), i32),
            "passage_mask": jax.ShapeDtypeStruct((b * g, tp), i32),
            "in_batch_negatives": jax.ShapeDtypeStruct((b,), jnp.bool_)}


def per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes of the largest shard set one device holds of `tree` under `shardings` (same structure)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = sharding.shard_shape(tuple(leaf.shape)) if leaf.shape else ()
        total += int(math.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def _memory(compiled) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f: int(getattr(analysis, f, 0) or 0) for f in fields}


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _is_embedding(path: str) -> bool:
    return path.endswith(("embed_tokens/embedding", "word_embeddings/embedding"))


def flash_attention_on(cfg, target: str) -> bool:
    """Whether the step's attention runs as a flash kernel on `target` ("gpu" | "tpu" | "cpu"): cuDNN's
    on a GPU with attention_impl auto / cudnn, bf16 compute and no attention-probability dropout."""
    return (target == "gpu" and getattr(cfg, "attention_impl", "reference") in ("auto", "cudnn")
            and cfg.dtype == "bfloat16" and not cfg.attention_dropout)


def analytic_terms(config: ml_collections.ConfigDict, cfg, params, shardings: dict, state, batch_bytes: int,
                   mesh, trainable, flash: bool = False) -> list[memory_model.Term]:
    """The analytic memory terms of this step on one device (boom_jax/training/memory_model.py)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    p_shardings = jax.tree.leaves(shardings["params"])
    sizes = {path_string(p): per_device_bytes(x, s) for (p, x), s in zip(leaves, p_shardings)}
    param_bytes = sum(sizes.values())
    grad_bytes = sum(b for k, b in sizes.items() if trainable is None or trainable(k))
    embedding = sum(b for k, b in sizes.items() if _is_embedding(k))
    shards = math.prod(mesh.shape[a] for a in batch_axes(mesh))
    b, g = config.train.batch_size, config.data.train_group_size
    tq, tp = batch_lengths(config, cfg)
    chunk = config.train.grad_cache_chunk or 0
    shapes = memory_model.StepShapes(queries=b // shards, query_len=tq, passages=b * g // shards, passage_len=tp,
                                     global_queries=b, global_passages=b * g, chunk_queries=chunk // shards)
    return memory_model.step_memory(
        cfg, shapes, param_bytes=param_bytes, opt_state_bytes=per_device_bytes(state["opt_state"], shardings["opt_state"]),
        grad_bytes=grad_bytes, batch_bytes=batch_bytes, embedding_bytes=embedding,
        flash_attention=flash)


@dataclasses.dataclass
class StepSetup:
    """Everything the dry run derives from a config before compiling: the model config, abstract
    params / state / batch, their shardings, the mesh and the jitted step."""

    cfg: Any
    params: Any
    state: Any
    shardings: dict
    batch: dict
    mesh: Any
    trainable: Any
    jitted: Any


def target_devices(num_devices: int | None = None, topology: str | None = None) -> list:
    """The devices of TPU slice `topology`, else `num_devices` (default all) devices of this process."""
    if not topology:
        return _cpu_devices(num_devices)
    devices = tpu_topology_devices(topology)
    if num_devices and num_devices != len(devices):
        raise DryRunError(f"--devices={num_devices} but --topology={topology} has {len(devices)} devices; "
                          f"pass one of them")
    return devices


def build_step(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> StepSetup:
    """The config's train step on `devices`, jitted for abstract inputs (no weights read): build_run in
    abstract mode, so the dry run compiles exactly the step a run of this config would."""
    setup = build_run(config, abstract=True, devices=devices)
    state = setup.initial_state()
    return StepSetup(setup.model_config, setup.params, state, setup.shardings, batch_shapes(config, setup.model_config),
                     setup.mesh, setup.trainable, setup.train_step.jitted)


def apply_memory_limit(report: dict[str, Any], device_memory_bytes: int | None) -> dict[str, Any]:
    """`report` with device_memory_bytes and fits set: the estimate's peak against the limit (None
    without a limit). Only the estimate named by report["estimate"] decides."""
    limit = int(device_memory_bytes) if device_memory_bytes else None
    return {**report, "device_memory_bytes": limit,
            "fits": (report["peak_bytes_per_device"] <= limit) if limit else None}


def dry_run(config: ml_collections.ConfigDict, num_devices: int | None = None,
            device_memory_bytes: int | None = None, topology: str | None = None,
            stand_in_for: str = "gpu") -> dict[str, Any]:
    """Compile the train step of `config` for the target and report its memory and FLOPs.

    Target: TPU slice `topology` (compiled for it through libtpu), else `num_devices` (default: all
    visible) devices of this process (XLA:CPU), standing in for `stand_in_for` ("gpu" | "cpu": the
    analytic count assumes that backend's attention kernel). Returns a dict: target, devices,
    platform, mesh, param_count, trainable_param_count, param/opt_state/batch bytes per device (exact
    shard sizes), XLA's memory analysis (argument / output / alias / temp / generated_code bytes per
    device), xla_peak_bytes_per_device (arguments + outputs - aliased + temporaries), analytic (the
    terms of memory_model.step_memory, key -> bytes; labels in analytic_labels),
    analytic_peak_bytes_per_device, estimate ("xla" on a TPU target, "analytic" otherwise) and
    peak_bytes_per_device (that estimate's), dominant (the largest analytic term and the config key
    that lowers it), flops_per_step (matmul FLOPs, loop bodies x trip counts, all devices),
    xla_flops_per_step (XLA's cost analysis x devices: each loop body once), analytic_flops_per_step,
    device_memory_bytes (given; the TPU's HBM by default) and fits (None when no limit is known).
    No weights are read; nothing is run.
    """
    if stand_in_for not in ("gpu", "cpu"):
        raise DryRunError(f"--platform={stand_in_for!r}: expected gpu or cpu (TPUs: --topology)")
    devices = target_devices(num_devices, topology)
    setup = build_step(config, devices)
    cfg, params, state, shardings, mesh, trainable = (setup.cfg, setup.params, setup.state, setup.shardings,
                                                      setup.mesh, setup.trainable)
    traced = setup.jitted.trace(state, setup.batch)
    flop_count = traced_flops(traced)
    compiled = traced.lower().compile()

    leaves = jax.tree_util.tree_leaves_with_path(params)
    param_count = sum(int(math.prod(x.shape)) for _, x in leaves)
    trainable_count = sum(int(math.prod(x.shape)) for p, x in leaves if trainable is None or trainable(path_string(p)))
    bs = batch_sharding(mesh)
    batch_bytes = per_device_bytes(setup.batch, {k: bs for k in setup.batch})
    memory = _memory(compiled)
    xla_peak = (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
                - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0))
    platform = devices[0].platform
    target = "tpu" if platform == "tpu" else stand_in_for
    flash = flash_attention_on(cfg, target)
    terms = analytic_terms(config, cfg, params, shardings, state, batch_bytes, mesh, trainable, flash)
    analytic_peak = terms[-1].bytes
    estimate = "xla" if platform == "tpu" else "analytic"
    if device_memory_bytes is None:
        if topology:
            device_memory_bytes = int(parse_topology(topology)[0].hbm_gib * 2**30)
        else:
            device_memory_bytes = (devices[0].memory_stats() or {}).get("bytes_limit")
    top = memory_model.dominant(terms)
    tq, tp = batch_lengths(config, cfg)
    b, g = config.train.batch_size, config.data.train_group_size
    analytic_flops = memory_model.step_flops(cfg, b, tq, b * g, tp, trainable_weights=trainable is None,
                                             grad_cache=bool(config.train.grad_cache_chunk))
    report = {
        "config": config.name,
        "arch": cfg.arch,
        "target": (f"TPU {topology}" if topology else
                   f"{len(devices)} {stand_in_for.upper()}s (compiled by XLA:CPU on {len(devices)} CPU devices)"),
        "attention": "flash (cuDNN)" if flash else "materialized scores (XLA)",
        "devices": len(devices),
        "platform": platform,
        "device_kind": devices[0].device_kind,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "num_layers": cfg.num_hidden_layers,
        "remat": bool(cfg.remat),
        "param_count": param_count,
        "trainable_param_count": trainable_count,
        "param_bytes_per_device": per_device_bytes(state["params"], shardings["params"]),
        "opt_state_bytes_per_device": per_device_bytes(state["opt_state"], shardings["opt_state"]),
        "batch_bytes_per_device": batch_bytes,
        **memory,
        "xla_peak_bytes_per_device": int(xla_peak),
        "analytic": {t.key: t.bytes for t in terms},
        "analytic_labels": {t.key: t.label for t in terms},
        "analytic_peak_bytes_per_device": int(analytic_peak),
        "estimate": estimate,
        "peak_bytes_per_device": int(xla_peak if estimate == "xla" else analytic_peak),
        "dominant": {"term": top.key, "label": top.label, "bytes": top.bytes, "lower_with": top.lower_with},
        "flops_per_step": flop_count.flops,
        "flops_per_step_per_device": flop_count.flops / len(devices),
        "xla_flops_per_step": _xla_flops(compiled) * len(devices),
        "analytic_flops_per_step": analytic_flops,
        "loops_without_trip_count": flop_count.unknown_trip_loops,
    }
    return apply_memory_limit(report, device_memory_bytes)


ESTIMATE_REASONS = {
    "xla": "XLA's memory analysis of the step compiled for the target itself",
    "analytic": ("the analytic count (memory_model.py): this target has no compiler here, and XLA:CPU's buffer "
                 "assignment is not a GPU's (it runs remat recomputation ahead of the backward of unrolled "
                 "layers and keeps float32 copies of bfloat16 tensors), so XLA:CPU's peak is an upper bound"),
}


def verdict(report: dict[str, Any]) -> str:
    """One line: fits / DOES NOT FIT (and the term to lower, with its config key) / no limit known."""
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    limit = report["device_memory_bytes"]
    if not limit:
        return "no device memory given (--device_memory_gb): no verdict"
    which = "XLA" if report["estimate"] == "xla" else "analytic"
    if report["fits"]:
        line = f"fits: {which} peak {gib(report['peak_bytes_per_device'])} of {gib(limit)}"
        if report["estimate"] == "analytic" and report["xla_peak_bytes_per_device"] > limit:
            line += (f" (XLA:CPU's {gib(report['xla_peak_bytes_per_device'])} is above the limit; it is an "
                     f"upper bound, not the target's figure)")
        return line
    top = report["dominant"]
    return (f"DOES NOT FIT: {which} peak {gib(report['peak_bytes_per_device'])} > {gib(limit)}; the largest term "
            f"is {top['label']} ({gib(top['bytes'])}): change {top['lower_with']}")


def _size(n: float) -> str:
    """Bytes as GiB (MiB below 1 GiB), right-aligned in 13 characters."""
    return f"{n / 2**30:9.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:9.2f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of a dry-run report: the analytic terms beside XLA's figures."""
    gib = _size
    xla_name = "XLA:TPU" if report["platform"] == "tpu" else f"XLA:{report['platform'].upper()}"
    lines = [f"dry run of {report['config']} ({report['arch']}, {report['num_layers']} layers, "
             f"remat {'on' if report['remat'] else 'off'}) for {report['target']}"
             + (f" ({report['device_kind']})" if report["platform"] == "tpu" else "") + f", mesh {report['mesh']}",
             f"  params            {report['param_count']:,} ({report['trainable_param_count']:,} trainable)",
             f"  {'per device':<44} {'analytic':>13} {xla_name:>13}"]
    labels = report["analytic_labels"]
    for key, value in report["analytic"].items():
        if key == "peak":
            continue
        lines.append(f"  {labels[key]:<44} {gib(value)}")
    for label, key in (("XLA arguments", "argument_size_in_bytes"), ("XLA outputs (aliased excluded)", None),
                       ("XLA temporaries", "temp_size_in_bytes")):
        if key is None:
            value = report.get("output_size_in_bytes", 0) - report.get("alias_size_in_bytes", 0)
        else:
            value = report.get(key, 0)
        lines.append(f"  {label:<44} {'':13} {gib(value)}")
    lines.append(f"  {'peak':<44} {gib(report['analytic_peak_bytes_per_device'])} "
                 f"{gib(report['xla_peak_bytes_per_device'])}")
    lines.append(f"  estimate used     {report['estimate']}: {ESTIMATE_REASONS[report['estimate']]}")
    lines.append(f"  analytic count    assumes attention {report['attention']}, batches padded to the maximum "
                 f"lengths (packing only lowers it)")
    lines.append(f"  FLOPs per step    {report['flops_per_step']:.3e} (matmuls of the traced step, loop bodies x "
                 f"trip counts; {report['flops_per_step_per_device']:.3e} per device); analytic "
                 f"{report['analytic_flops_per_step']:.3e}; XLA cost analysis {report['xla_flops_per_step']:.3e} "
                 f"(counts each loop body once)")
    if report["loops_without_trip_count"]:
        lines.append(f"  note              {report['loops_without_trip_count']} while loop(s) without a static trip "
                     f"count were counted once")
    lines.append(f"  device memory     {verdict(report)}")
    return "\n".join(lines)


def _requested_devices(argv: Sequence[str]) -> int | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def reexec_with_devices(argv: Sequence[str]) -> None:
    """Re-executes this command with N fake CPU devices when --devices=N asks for more than the
    environment provides (the flag only takes effect before JAX starts)."""
    n = _requested_devices(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    match = re.search(rf"{DEVICE_COUNT_FLAG}=(\d+)", flags)
    if n is None or (match and int(match.group(1)) >= n):
        return
    flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\d+", "", flags).strip()
    env = dict(os.environ, XLA_FLAGS=f"{flags} {DEVICE_COUNT_FLAG}={n}".strip(), JAX_PLATFORMS="cpu")
    os.execve(sys.executable, [sys.executable, "-m", "boom_jax.training.dry_run", *argv[1:]], env)


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    limit = int(FLAGS.device_memory_gb * 2**30) if FLAGS.device_memory_gb else None
    report = dry_run(FLAGS.config, FLAGS.devices or None, device_memory_bytes=limit, topology=FLAGS.topology or None,
                     stand_in_for=FLAGS.platform)
    print(format_report(report))
    if FLAGS.json:
        write_json(FLAGS.json, report)
    if report["fits"] is False:
        raise SystemExit(1)


def run() -> None:
    reexec_with_devices(sys.argv)
    if any(a.startswith("--topology") for a in sys.argv[1:]):
        # Compile-only: the host's own backend is the CPU (libtpu then only serves the topology).
        jax.config.update("jax_platforms", "cpu")
    config_flags.DEFINE_config_file("config", None, "Training config file: configs/NAME.py[:ARG].",
                                    lock_config=True)
    flags.DEFINE_integer("devices", 0, "Target device count (0 = the visible devices); more than visible "
                         "re-executes on that many fake CPU devices.")
    flags.DEFINE_string("topology", "", "TPU slice to compile for ahead of time (v5p:2x2x1, v5e:2x4, v4:2x2x1, "
                        "v6e:2x2, ...); needs libtpu. Empty: XLA:CPU plus the analytic count.")
    flags.DEFINE_enum("platform", "gpu", ["gpu", "cpu"], "Without --topology: the devices XLA:CPU stands in for "
                      "(the analytic count assumes their attention kernel: cuDNN flash on GPUs with bf16).")
    flags.DEFINE_float("device_memory_gb", 0.0, "Memory per device in GiB (default on a TPU topology: its HBM); "
                       "a peak above it exits with 1.")
    flags.DEFINE_string("json", "", "Also write the report as JSON to this file.")
    flags.mark_flags_as_required(["config"])
    cli.run(main)  # bad input: one line, exit code 2


if __name__ == "__main__":
    run()

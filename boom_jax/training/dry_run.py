"""Compile-only dry run: lower and compile the train step for a config's mesh and shapes, without
loading any weights, and report per-device memory and FLOPs, so a config that cannot fit is caught
before it is launched.

    python -m boom_jax.training.dry_run --config=configs/qwen3_0p6b_bls.py --devices=256 \\
        [--config.model.path=/models/Qwen3-0.6B] [--device_memory_gb=141] [--json=report.json]

The params are abstract (`jax.eval_shape` of the model's init, sized from the model folder's
config.json and config.model.sizes); the optimizer state likewise; the batch is
[batch_size, query_max_len] queries and [batch_size * train_group_size, passage_max_len] passages.

A target of more devices than this machine has is compiled on fake CPU devices: the process must
start with XLA_FLAGS=--xla_force_host_platform_device_count=N (and JAX_PLATFORMS=cpu) before JAX is
imported. The command line does this itself: with --devices=N larger than the visible device count
it re-executes itself with those variables set. The memory figures are then XLA's CPU-backend
estimates of the same SPMD program (the per-device shards of params, optimizer state and batch are
exact; temporaries depend on the backend's fusion and are indicative for GPU/TPU).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class DryRunError(ValueError):
    """A dry run that cannot be set up (e.g. more target devices than the process has)."""


def abstract_model(config: ml_collections.ConfigDict):
    """(ModelConfig, params as ShapeDtypeStructs) from config.model without reading any weights."""
    from boom_jax.models import build_model
    from boom_jax.models.config import ModelConfig
    from boom_jax.models.registry import to_plain_dict
    from boom_jax.training.config_validation import ConfigError
    from boom_jax.training.loop import resolve_model_path, runtime_overrides

    path = resolve_model_path(config.model.path)
    model_config = os.path.join(path, "model_config.json")
    if not os.path.exists(model_config) and os.path.exists(os.path.join(path, "model", "model_config.json")):
        model_config = os.path.join(path, "model", "model_config.json")
    if os.path.exists(model_config):
        with open(model_config, encoding="utf-8") as f:
            cfg = ModelConfig.from_dict(json.load(f))
    else:
        from boom_jax.hf.loader import config_from_folder

        cfg = config_from_folder(path)[0]
    overrides = runtime_overrides(config)
    lora = {k: v for k, v in overrides.items() if k.startswith("lora")}
    try:
        if config.model.random_init and config.model.sizes:
            cfg = cfg.replace(**dict(config.model.sizes))
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if not k.startswith("lora")})
    except ValueError as e:
        raise ConfigError(f"config.model.sizes: {e}") from e
    module = build_model(cfg)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    params = jax.eval_shape(lambda i: module.init(jax.random.PRNGKey(0), i, i, deterministic=True), ids)["params"]
    params = to_plain_dict(params)
    if lora:
        from boom_jax.models.lora import add_lora_params

        cfg = cfg.replace(**lora)
        # LoRA leaves are small ([in, r] and [r, out]): drawing them for real costs nothing.
        params = add_lora_params(params, cfg, jax.random.PRNGKey(0))
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    return cfg, params


def batch_shapes(config: ml_collections.ConfigDict, cfg) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's input shapes at the config's largest lengths (the worst case)."""
    max_len = cfg.max_position_embeddings if cfg.arch == "bert" else 1 << 30
    b, g = config.train.batch_size, config.data.train_group_size
    tq, tp = min(config.data.query_max_len, max_len), min(config.data.passage_max_len, max_len)
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


def _devices(num_devices: int | None) -> list:
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


def _memory(compiled) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f: int(getattr(analysis, f, 0) or 0) for f in fields}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def dry_run(config: ml_collections.ConfigDict, num_devices: int | None = None,
            device_memory_bytes: int | None = None) -> dict[str, Any]:
    """Compile the train step of `config` for `num_devices` (default: all visible) and report its size.

    Returns a dict: devices, mesh (axis -> size), param_count, trainable_param_count,
    param_bytes_per_device and opt_state_bytes_per_device (this device's shards, float32 params),
    batch_bytes_per_device, xla memory_analysis fields (argument / output / alias / temp /
    generated_code bytes per device), peak_bytes_per_device (arguments + outputs - aliased + temps),
    flops_per_step_per_device (XLA's cost analysis of the per-device program), flops_per_step (that
    x devices: work replicated across devices, e.g. over "tensor", counts once per device), device_memory_bytes (given, or the device's limit when it reports one) and fits (None
    when no limit is known). No weights are read; nothing is run.
    """
    from boom_jax.models import build_model
    from boom_jax.training.config_validation import check_combinations, validate_config
    from boom_jax.training.loop import _mesh_spec, build_optimizer
    from boom_jax.training.sharding import DEFAULT_RULES, make_mesh
    from boom_jax.training.step import init_train_state, make_train_step, module_embed_fn, train_state_shardings

    devices = _devices(num_devices)
    validate_config(config, len(devices))
    cfg, params = abstract_model(config)
    check_combinations(config, len(devices), cfg.arch)
    mesh = make_mesh(_mesh_spec(config), devices=devices, key="config.mesh")
    total_steps = config.train.max_steps or 1000  # shapes do not depend on it
    optimizer, schedule, trainable = build_optimizer(config, cfg, total_steps)
    rng = jax.random.PRNGKey(config.seed)
    shardings = train_state_shardings(params, optimizer, rng, mesh, DEFAULT_RULES[cfg.arch])
    state = jax.eval_shape(lambda p: init_train_state(p, optimizer, rng), params)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings)
    batch = batch_shapes(config, cfg)
    train_step = make_train_step(module_embed_fn(build_model(cfg)), optimizer, config.train.temperature,
                                 schedule=schedule, mesh=mesh, state_shardings=shardings,
                                 grad_cache_chunk=config.train.grad_cache_chunk or None, trainable=trainable)
    compiled = train_step.jitted.lower(state, batch).compile()

    from boom_jax.training.sharding import batch_sharding, path_string

    leaves = jax.tree_util.tree_leaves_with_path(params)
    param_count = sum(int(math.prod(x.shape)) for _, x in leaves)
    trainable_count = sum(int(math.prod(x.shape)) for p, x in leaves if trainable is None or trainable(path_string(p)))
    bs = batch_sharding(mesh)
    memory = _memory(compiled)
    peak = (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0))
    if device_memory_bytes is None:
        stats = devices[0].memory_stats() or {}
        device_memory_bytes = stats.get("bytes_limit")
    flops_device = _flops(compiled)
    return {
        "config": config.name,
        "arch": cfg.arch,
        "devices": len(devices),
        "platform": devices[0].platform,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "param_count": param_count,
        "trainable_param_count": trainable_count,
        "param_bytes_per_device": per_device_bytes(state["params"], shardings["params"]),
        "opt_state_bytes_per_device": per_device_bytes(state["opt_state"], shardings["opt_state"]),
        "batch_bytes_per_device": per_device_bytes(batch, {k: bs for k in batch}),
        **memory,
        "peak_bytes_per_device": int(peak),
        "flops_per_step_per_device": flops_device,
        "flops_per_step": flops_device * len(devices),
        "device_memory_bytes": int(device_memory_bytes) if device_memory_bytes else None,
        "fits": (peak <= device_memory_bytes) if device_memory_bytes else None,
    }


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of a dry-run report."""
    gib = lambda n: f"{n / 2**30:10.3f} GiB"  # noqa: E731
    lines = [f"dry run of {report['config']} ({report['arch']}) on {report['devices']} {report['platform']} "
             f"devices, mesh {report['mesh']}",
             f"  params            {report['param_count']:,} ({report['trainable_param_count']:,} trainable)"]
    for label, key in (("params", "param_bytes_per_device"), ("optimizer state", "opt_state_bytes_per_device"),
                       ("batch", "batch_bytes_per_device"), ("XLA arguments", "argument_size_in_bytes"),
                       ("XLA outputs", "output_size_in_bytes"), ("XLA temporaries", "temp_size_in_bytes"),
                       ("peak (estimate)", "peak_bytes_per_device")):
        if key in report:
            lines.append(f"  {label:<17} {gib(report[key])} per device")
    lines.append(f"  FLOPs per step    {report['flops_per_step']:.3e} ({report['flops_per_step_per_device']:.3e} "
                 f"per device)")
    if report["device_memory_bytes"]:
        verdict = "fits" if report["fits"] else "DOES NOT FIT"
        lines.append(f"  device memory     {gib(report['device_memory_bytes'])}: {verdict}")
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
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    limit = int(FLAGS.device_memory_gb * 2**30) if FLAGS.device_memory_gb else None
    report = dry_run(FLAGS.config, FLAGS.devices or None, device_memory_bytes=limit)
    print(format_report(report))
    if FLAGS.json:
        tmp = FLAGS.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, FLAGS.json)
    if report["fits"] is False:
        raise SystemExit(1)


def run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    reexec_with_devices(sys.argv)
    config_flags.DEFINE_config_file("config", None, "Training config file: configs/NAME.py[:ARG].",
                                    lock_config=True)
    flags.DEFINE_integer("devices", 0, "Target device count (0 = the visible devices); more than visible "
                         "re-executes on that many fake CPU devices.")
    flags.DEFINE_float("device_memory_gb", 0.0, "Memory per device in GiB; a peak above it exits with 1.")
    flags.DEFINE_string("json", "", "Also write the report as JSON to this file.")
    flags.mark_flags_as_required(["config"])
    from boom_jax import cli

    cli.run(main)  # bad input: one line, exit code 2


if __name__ == "__main__":
    run()

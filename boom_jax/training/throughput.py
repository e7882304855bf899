"""Peak FLOP/s of the devices and matmul parameter counts, for the MFU the training loop logs."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from boom_jax.tree_paths import path_string

# Peak dense FLOP/s per device for MFU (bf16 for accelerators; CPU: a rough per-core f32 figure).
PEAK_FLOPS = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
              "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12}
CPU_PEAK_FLOPS_PER_CORE = 50e9  # fallback when /proc/cpuinfo cannot be read


def count_matmul_params(params: Any) -> int:
    """Parameters used in matrix multiplies (all but embedding tables, norms and biases)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf.ndim >= 2 and "embed" not in path_string(path):
            total += int(np.prod(leaf.shape))
    return total


def train_flops_per_token(matmul_params: int, trains_all_weights: bool, grad_cache: bool) -> int:
    """Matmul FLOPs per computed token of one train step: forward 2, backward 2 (activations) + 2 (weights,
    unless only LoRA leaves train), and another forward 2 with the gradient cache."""
    return (2 * (3 if trains_all_weights else 2) + (2 if grad_cache else 0)) * matmul_params


def cpu_peak_flops() -> tuple[float, str]:
    """Estimated FP32 peak FLOP/s of the CPU cores this process may use (cores x clock x FLOPs per
    cycle from the CPU flags, two FMA units), and how it was estimated."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz, flags_line = 0.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
                if line.startswith("flags") and not flags_line:
                    flags_line = line
    except OSError:
        pass
    if not mhz:
        return cores * CPU_PEAK_FLOPS_PER_CORE, f"{cores} cores x {CPU_PEAK_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s (assumed)"
    cpu_flags = set(flags_line.split(":")[1].split()) if flags_line else set()
    per_cycle = 64 if "avx512f" in cpu_flags else 32 if "fma" in cpu_flags else 16
    return cores * mhz * 1e6 * per_cycle, f"{cores} cores x {mhz:.0f} MHz x {per_cycle} FP32 FLOPs/cycle"


def peak_flops_per_device() -> float:
    """Peak FLOP/s of one device: the accelerator table, or the CPU estimate split over the host devices."""
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    for key, value in PEAK_FLOPS.items():
        if key in kind:
            return value
    if device.platform == "cpu":
        return cpu_peak_flops()[0] / jax.device_count()
    return float("nan")

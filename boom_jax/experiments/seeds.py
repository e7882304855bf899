"""The comparison's seeds: which there are, each seed's config and where its runs live."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import ml_collections

from boom_jax.errors import ConfigError


def experiment_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The training seeds of the comparison: config.seed, config.seed + 1, ... (config.experiment.seeds of them)."""
    n = config.experiment.get("seeds", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"config.experiment.seeds={n!r}: expected a whole number >= 1 (training runs per strategy)")
    return [int(config.seed) + k for k in range(n)]


def seed_config(config: ml_collections.ConfigDict, offset: int) -> ml_collections.ConfigDict:
    """The experiment's config for its `offset`-th seed: training seed, bag sampling seed and incremental
    history seed all moved by `offset` (the data, the dev split of the cluster probes and the evaluation
    samples stay the same, so every seed is scored on the same items)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.seed = int(config.seed) + offset
        if "bag" in c:
            c.bag.seed = int(config.bag.seed) + offset
        if "incremental" in c:
            c.incremental.history_seed = int(config.incremental.history_seed) + offset
        if offset and c.experiment.bag_workdir:  # a reused bag holds one seed's members
            c.experiment.bag_workdir = ""
    return c


def seed_workdir(workdir: str, seeds: Sequence[int], seed: int) -> str:
    """Where one seed's runs live: DIR itself for a one-seed experiment, else DIR/seed_<seed>."""
    return workdir if len(seeds) == 1 else os.path.join(workdir, f"seed_{seed}")

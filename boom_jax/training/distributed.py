"""Multi-host training: start jax.distributed, turn each host's batch slice into global arrays,
and bring (possibly sharded) params back to the host.

Every host runs the same program. Each one loads only its slice of every global batch (the Batcher's
`process_index` / `process_count`), builds global arrays from it with `global_batch`, and takes part
in every jitted step and every Orbax save (Orbax synchronizes the hosts itself). Only process 0
(`is_main_process()`) writes logs, metrics and the exported model folders.

On CPU the cross-process collectives are gloo (jax's default): two processes on one machine work,
which is how the tests check that a 2-host run equals a 1-host run on the same number of devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from boom_jax.training.sharding import batch_sharding


# Environment variables by which jax.distributed.initialize() finds its cluster on its own.
AUTO_DETECT_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID",
                   "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS")


class DistributedInitError(ValueError):
    """Distributed flags that cannot start a multi-host run; the message names the flags."""


def maybe_initialize(
    distributed: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts jax.distributed when `distributed` is True; returns whether it is running.

    With all three of `coordinator_address` ("HOST:PORT"), `num_processes` and `process_id` given,
    they are passed on. With none of them, `jax.distributed.initialize()` is called without arguments
    so JAX detects the cluster itself (TPU pods, Slurm, Open MPI). Giving only some is an error, as is
    giving any of them without `distributed`. Calling it again once initialized does nothing (the
    arguments must then agree with the running setup). Must run before any other JAX call that
    touches a device.
    """
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    present = [k for k, v in given.items() if v is not None and v != ""]
    if not distributed:
        if present:
            raise DistributedInitError(f"{', '.join(present)} given without --distributed; add --distributed "
                                       f"or drop them")
        return False
    if present and len(present) != len(given):
        missing = [k for k in given if k not in present]
        raise DistributedInitError(
            f"--distributed got {', '.join(present)} but not {', '.join(missing)}: give all three "
            f"(e.g. --coordinator_address=host0:12355 --num_processes=2 --process_id=0) or none (TPU / Slurm "
            f"auto-detection)")
    if present:
        if ":" not in str(coordinator_address):
            raise DistributedInitError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
        if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
            raise DistributedInitError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    if jax.distributed.is_initialized():
        if present and (jax.process_count() != int(num_processes) or jax.process_index() != int(process_id)):
            raise DistributedInitError(
                f"jax.distributed is already running as process {jax.process_index()} of {jax.process_count()}, "
                f"not {process_id} of {num_processes}")
        return True
    if present:
        jax.distributed.initialize(coordinator_address=str(coordinator_address), num_processes=int(num_processes),
                                   process_id=int(process_id))
    else:
        if not any(k in os.environ for k in AUTO_DETECT_ENV):
            logging.warning("--distributed without a coordinator: relying on JAX's cluster auto-detection")
        jax.distributed.initialize()
    # every process reports itself (not only process 0)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """True on the process that logs, writes metrics and exports (process 0)."""
    return jax.process_index() == 0


def global_batch(batch: dict, mesh: Mesh, sharding: NamedSharding | None = None) -> dict:
    """This host's slice of a batch (Batcher with process_index/process_count) as global jax arrays.

    Arrays with a leading batch axis become global arrays split over the mesh's batch axes (global
    leading size = local size x process_count); scalars (dataset_id, in_batch_negatives) must be the
    same on every host and are kept as numpy scalars, except in_batch_negatives which becomes [B]. With one process the batch is returned as is
    (the jitted step places numpy inputs itself).
    """
    if jax.process_count() == 1:
        return batch
    sharding = sharding or batch_sharding(mesh)
    local = np.shape(batch["query_index" if "query_index" in batch else "query_ids"])[0]  # queries (packed or not)
    out = {}
    for key, value in batch.items():
        if key == "in_batch_negatives":  # a per-batch flag: one entry per query, like the step wants
            value = np.broadcast_to(np.asarray(value, dtype=bool), (local,)).copy()
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[key] = value
    return out


def to_host(tree: Any) -> Any:
    """Numpy copies of a tree of jax arrays on every host, gathering shards held by other hosts."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_shards[0].data)
        return np.asarray(x)

    return jax.tree.map(one, tree)


def sync(name: str) -> None:
    """A barrier across hosts (no-op with one process), e.g. before process 0 writes shared files."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


__all__ = ["DistributedInitError", "global_batch", "is_main_process", "maybe_initialize", "sync", "to_host"]

"""Device mesh and declarative parameter sharding (logical axis rules by parameter path pattern).

A mesh spec names the axes and their sizes, e.g. ``(("data", -1), ("fsdp", 1), ("tensor", 1))``;
``-1`` takes the devices left over by the other axes. Batches are split over ``("data", "fsdp")`` on
their leading axis (FSDP shards the params AND the batch); params are placed by rules.

A rule is data: ``(pattern, spec)`` or ``(pattern, spec, replicate_if_indivisible)``.
- ``pattern``: a regex searched (``re.search``) in the "/"-joined parameter path, e.g.
  ``"encoder/layer_0/attention/self/query/kernel"``. The FIRST matching rule wins.
- ``spec``: ``None`` (replicated, any rank) or a tuple with one entry per dimension of the leaf, each
  ``None``, a mesh axis name, or a tuple of axis names (like ``jax.sharding.PartitionSpec``).
- ``replicate_if_indivisible`` (default False): a dimension whose size is not divisible by the product
  of its mesh axes is replicated instead of raising.
A parameter that matches no rule is an error naming it: nothing is replicated by accident.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.models.registry import ARCHS, BERT_RULES, QWEN3_RULES, Rule, get_arch  # noqa: F401 (re-exports)
from boom_jax.tree_paths import path_string  # noqa: F401 (re-exported: step.py, dry_run.py import it here)

MeshSpec = Sequence[tuple[str, int]]
BATCH_AXES = ("data", "fsdp")

DEFAULT_MESH: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))

# The per-architecture rules live in the architecture spec (models/registry.py); this is the view
# by arch name. BERT_RULES / QWEN3_RULES are re-exported for callers that name one architecture.
DEFAULT_RULES: dict[str, tuple[Rule, ...]] = {name: spec.sharding_rules for name, spec in ARCHS.items()}


def rules_for(arch: str) -> tuple[Rule, ...]:
    """The sharding rules of architecture `arch` (its ArchSpec.sharding_rules; unknown: a clear error)."""
    return get_arch(arch).sharding_rules


class ShardingError(ValueError):
    """A mesh spec or a sharding rule that cannot be applied; the message names the key or param."""


def make_mesh(spec: MeshSpec, devices: Sequence[Any] | None = None, key: str = "mesh") -> Mesh:
    """A Mesh (auto-sharded axes) from ``((name, size), ...)``; at most one size may be -1.

    ``key`` is the config key named in errors.
    """
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = [], []
    for entry in spec:
        if len(entry) != 2 or not isinstance(entry[0], str):
            raise ShardingError(f"{key}: each entry must be (axis_name, size), got {entry!r}")
        names.append(entry[0])
        sizes.append(int(entry[1]))
    if len(set(names)) != len(names):
        raise ShardingError(f"{key}: duplicate axis names in {list(spec)}")
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ShardingError(f"{key}: at most one axis may have size -1, got {list(spec)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"{key}: axis sizes must be positive or -1, got {list(spec)}")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if len(devices) % known:
            raise ShardingError(
                f"{key}: {len(devices)} devices are not divisible by the fixed axes {list(spec)} "
                f"(product {known})"
            )
        sizes[unknown[0]] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ShardingError(
            f"{key}: mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available"
        )
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


def _axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check_rules(rules: Sequence[Rule], mesh: Mesh) -> list[tuple[re.Pattern, Any, bool, str]]:
    compiled = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) not in (2, 3):
            raise ShardingError(f"sharding rule must be (pattern, spec[, replicate_if_indivisible]): {rule!r}")
        pattern, spec = rule[0], rule[1]
        fallback = bool(rule[2]) if len(rule) == 3 else False
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ShardingError(f"sharding rule {pattern!r}: bad regex ({err})") from err
        if spec is not None:
            for entry in spec:
                for axis in _axes_of(entry):
                    if axis not in mesh.shape:
                        raise ShardingError(
                            f"sharding rule {pattern!r}: mesh axis {axis!r} not in mesh axes {tuple(mesh.shape)}"
                        )
        compiled.append((regex, spec, fallback, pattern))
    return compiled


def partition_spec_for(name: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule]) -> P:
    """The PartitionSpec of one parameter ``name`` ("/"-joined path) of ``shape`` under ``rules``."""
    return _spec_for(name, tuple(shape), mesh, _check_rules(rules, mesh))


def _spec_for(name: str, shape: tuple[int, ...], mesh: Mesh, compiled) -> P:
    for regex, spec, fallback, pattern in compiled:
        if not regex.search(name):
            continue
        if spec is None:
            return P()
        if len(spec) != len(shape):
            raise ShardingError(
                f"parameter {name!r} {shape}: sharding rule {pattern!r} has {len(spec)} entries for "
                f"{len(shape)} dimensions"
            )
        entries = []
        for dim, (size, entry) in enumerate(zip(shape, spec)):
            axes = _axes_of(entry)
            parts = math.prod(mesh.shape[a] for a in axes)
            if size % parts:
                if not fallback:
                    raise ShardingError(
                        f"parameter {name!r} {shape}: dimension {dim} (size {size}) is not divisible by "
                        f"mesh axes {axes} ({parts} shards) under rule {pattern!r}; mark the rule "
                        f"replicate_if_indivisible or change the mesh"
                    )
                entry = None
            entries.append(entry if entry is None or isinstance(entry, str) else tuple(entry))
        return P(*entries)
    raise ShardingError(f"parameter {name!r} {shape} matches no sharding rule")


def param_partition_specs(params: Any, mesh: Mesh, rules: Sequence[Rule]) -> Any:
    """A tree of PartitionSpecs shaped like ``params`` (arrays or ShapeDtypeStructs)."""
    compiled = _check_rules(rules, mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _spec_for(path_string(path), tuple(x.shape), mesh, compiled), params
    )


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[Rule]) -> Any:
    """A tree of NamedShardings shaped like ``params``."""
    specs = param_partition_specs(params, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def shard_params(params: Any, mesh: Mesh, rules: Sequence[Rule]) -> Any:
    """``params`` placed on the mesh according to ``rules``."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch's leading dimension is split over (those of ("data", "fsdp") present)."""
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ("data", "fsdp"); other dimensions replicated."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Puts every array of ``batch`` on the mesh split over its leading axis (scalars replicated).

    The leading size must be divisible by the batch shards; the error names the offending key.
    """
    shards = math.prod(mesh.shape[a] for a in batch_axes(mesh))

    def put(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0:
            return jax.device_put(x, replicated(mesh))
        if x.shape[0] % shards:
            raise ShardingError(
                f"batch[{path_string(path)!r}] has leading size {x.shape[0]}, not divisible by the "
                f"{shards} batch shards of mesh {dict(mesh.shape)}"
            )
        return jax.device_put(x, batch_sharding(mesh))

    return jax.tree_util.tree_map_with_path(put, batch)


def _trailing_dict_path(path: Any) -> tuple[str, ...]:
    """The dict keys at the end of a key path (the part of an optimizer-state path mirroring params)."""
    keys: list[str] = []
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(str(entry.key))
        else:
            break
    return tuple(reversed(keys))


def state_shardings_like(tree: Any, params: Any, param_sharding_tree: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that mirrors params (optimizer state): each leaf whose trailing dict path
    and shape match a parameter gets that parameter's sharding; everything else (counters, scalars)
    is replicated. ``tree`` and ``params`` may be arrays or ``jax.eval_shape`` structs.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
    param_leaves = jax.tree_util.tree_leaves_with_path(params)
    sharding_leaves = jax.tree_util.tree_leaves(
        param_sharding_tree, is_leaf=lambda x: isinstance(x, NamedSharding)
    )
    for (path, leaf), sharding in zip(param_leaves, sharding_leaves):
        by_path[_trailing_dict_path(path)] = (tuple(leaf.shape), sharding)

    def pick(path, leaf):
        suffix = _trailing_dict_path(path)
        for start in range(len(suffix)):
            match = by_path.get(suffix[start:])
            if match and match[0] == tuple(leaf.shape):
                return match[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)

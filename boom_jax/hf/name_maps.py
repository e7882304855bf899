"""What every per-architecture weight map shares: nested-dict access by path, and turning HF tensors into
Flax params through a name map after checking names and shapes all at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from boom_jax.hf.errors import WeightMapError

Params = dict[str, Any]


def set_leaf(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_leaf(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def params_from_tensors(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                        entries: Iterable[tuple[str, tuple[str, ...], str]], source: str) -> Params:
    """Flax params (float32 numpy) from HF tensors; `entries` are (hf name, flax path, kind) with kind
    "dense" for transposed kernels. Missing, unexpected and misshapen tensors are reported together."""
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    misshapen = [(n, tensors[n].shape, s) for n, s in shapes.items() if n in tensors and tuple(tensors[n].shape) != s]
    if missing or unexpected or misshapen:
        raise WeightMapError(source, missing, unexpected, misshapen)
    params: Params = {}
    for hf_name, path, kind in entries:
        value = np.asarray(tensors[hf_name], dtype=np.float32)
        set_leaf(params, path, np.ascontiguousarray(value.T) if kind == "dense" else value)
    return params

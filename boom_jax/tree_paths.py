"""Leaf paths of pytrees as names: the one helper every layer uses to speak of a parameter by path.

A jax key path (`jax.tree_util.tree_flatten_with_path`) becomes "a/b/c" (`path_string`) or a tuple of
names (`path_names`, which also accepts "a/b/c" strings and name tuples). Sharding rules, optimizer
masks, LoRA leaf selection, merge filters and checkpoint listings all match these strings. Layer 1:
imports only jax.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


def key_name(entry: Any) -> str:
    """One key-path entry as a name: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_names(path: Any) -> tuple[str, ...]:
    """A leaf path as a tuple of names: accepts jax key paths, tuples of strings or "a/b/c" strings."""
    if isinstance(path, str):
        return tuple(p for p in path.split("/") if p)
    return tuple(key_name(entry) for entry in path)


def path_string(path: Any) -> str:
    """A jax key path as "a/b/c" (e.g. "encoder/layer_0/attention/self/query/kernel")."""
    return "/".join(key_name(entry) for entry in path)


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """(list of (path string, leaf), treedef) of a tree, in jax's leaf order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_string(p), leaf) for p, leaf in leaves], treedef


def map_with_path_strings(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """`tree` with each leaf replaced by `fn(path string, leaf)`."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_string(p), x), tree)


def set_path(tree: dict, path: str, value: Any) -> None:
    """Puts `value` at "a/b/c" in a nested dict, creating the inner dicts."""
    keys = path.split("/")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value

"""LoRA adapters: a Dense layer with optional low-rank update, and pure functions over params trees.

A targeted dense layer holds `kernel [in, out]` and, when LoRA is on, `lora_a [in, r]` (random,
PEFT's kaiming-uniform bound 1/sqrt(in)) and `lora_b [r, out]` (zeros) next to it, so that
`y = x @ kernel + dropout(x) @ lora_a @ lora_b * (alpha / r)`. With `lora_b = 0` the output is exactly
the base layer's. `fold_lora` writes the update into the kernels and drops the adapter leaves, so
the result loads into the same architecture with `lora_rank=0`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from boom_jax.models.dropout import Dropout
from boom_jax.tree_paths import path_names

LORA_A = "lora_a"
LORA_B = "lora_b"
LORA_LEAF_NAMES = frozenset({LORA_A, LORA_B})

# Short target names (as in configs: q, k, v, o, gate, up, down) -> dense module names in the tree.
LORA_TARGET_MODULES: Mapping[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}

lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(in))


def lora_module_names(targets: Iterable[str]) -> frozenset[str]:
    """Dense module names adapted for `targets` (short names like "q" or full names like "q_proj")."""
    names = set()
    for target in targets:
        if target in LORA_TARGET_MODULES:
            names.add(LORA_TARGET_MODULES[target])
        elif target in LORA_TARGET_MODULES.values():
            names.add(target)
        else:
            known = ", ".join(LORA_TARGET_MODULES)
            raise ValueError(f"lora_targets: unknown target {target!r} (known: {known} or their *_proj names)")
    return frozenset(names)


def lora_scale(cfg: Any) -> float:
    """The LoRA scaling factor alpha / rank."""
    if cfg.lora_rank <= 0:
        raise ValueError(f"lora_rank must be > 0 to use LoRA, got {cfg.lora_rank}")
    return float(cfg.lora_alpha) / float(cfg.lora_rank)


class LoRADense(nn.Module):
    """Bias-free Dense (`kernel [in, out]`, float32 params) with an optional LoRA update.

    Computes in `dtype`; `lora_rank=0` makes it a plain Dense.
    """

    features: int
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(stddev=0.02)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        x = x.astype(self.dtype)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if self.lora_rank > 0:
            lora_a = self.param(LORA_A, lora_a_init, (in_features, self.lora_rank), jnp.float32)
            lora_b = self.param(LORA_B, nn.initializers.zeros, (self.lora_rank, self.features), jnp.float32)
            h = Dropout(rate=self.lora_dropout)(x, deterministic=deterministic)
            h = jnp.dot(jnp.dot(h, lora_a.astype(self.dtype)), lora_b.astype(self.dtype))
            y = y + h * jnp.asarray(self.lora_alpha / self.lora_rank, self.dtype)
        return y


def is_lora_leaf(path: Any) -> bool:
    """True for the LoRA adapter leaves (`lora_a`, `lora_b`): the only leaves a LoRA run trains."""
    names = path_names(path)
    return bool(names) and names[-1] in LORA_LEAF_NAMES


def lora_mask(params: Any) -> Any:
    """A tree of bools shaped like `params`, True on LoRA leaves (for `optax.masked` and friends)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_lora_leaf(path), params)


def has_lora(params: Mapping[str, Any]) -> bool:
    """Whether the tree holds any LoRA leaf."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return any(is_lora_leaf(path) for path, _ in leaves)


def _walk_dense(params: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """Yields (path, node) for every dict that holds a `kernel` leaf."""
    for name, value in params.items():
        if isinstance(value, Mapping):
            if "kernel" in value and not isinstance(value["kernel"], Mapping):
                yield prefix + (name,), value
            yield from _walk_dense(value, prefix + (name,))


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree


def fold_lora(params: Mapping[str, Any], cfg: Any) -> dict:
    """Returns params with every `kernel += lora_a @ lora_b * alpha / r` and no LoRA leaves.

    Folding happens in float32 (float64 would not be representable on every backend). A tree without
    LoRA leaves comes back unchanged (as a fresh dict).
    """
    out = _copy_tree(params)
    scale = None
    for path, node in _walk_dense(out):
        has_a, has_b = LORA_A in node, LORA_B in node
        if not (has_a or has_b):
            continue
        if has_a != has_b:
            missing = LORA_B if has_a else LORA_A
            raise ValueError(f"{'/'.join(path)}: LoRA leaf {missing!r} is missing")
        if scale is None:
            scale = lora_scale(cfg)
        kernel, a, b = node["kernel"], node.pop(LORA_A), node.pop(LORA_B)
        if a.shape[0] != kernel.shape[0] or b.shape[1] != kernel.shape[1] or a.shape[1] != b.shape[0]:
            raise ValueError(
                f"{'/'.join(path)}: LoRA shapes {tuple(a.shape)} @ {tuple(b.shape)} do not fit kernel "
                f"{tuple(kernel.shape)}"
            )
        xp = np if isinstance(kernel, np.ndarray) else jnp
        delta = xp.matmul(xp.asarray(a, xp.float32), xp.asarray(b, xp.float32)) * xp.float32(scale)
        node["kernel"] = (xp.asarray(kernel, xp.float32) + delta).astype(kernel.dtype)
    leftovers = [p for p, _ in jax.tree_util.tree_leaves_with_path(out) if is_lora_leaf(p)]
    if leftovers:
        raise ValueError(f"LoRA leaves without a kernel next to them: {[ '/'.join(path_names(p)) for p in leftovers]}")
    return out


def add_lora_params(params: Mapping[str, Any], cfg: Any, rng: jax.Array) -> dict:
    """Adds fresh LoRA leaves (`lora_a` random, `lora_b` zeros; float32 NumPy) to every targeted layer.

    `cfg.lora_targets` picks the layers (by module name, see `LORA_TARGET_MODULES`); `cfg.lora_rank`
    their rank. Each layer draws from its own stream (`rng`'s key data plus the layer's index in
    sorted path order), so the result depends only on `rng` and the tree. Raises when a layer already has LoRA leaves or
    no layer matches the targets.
    """
    if cfg.lora_rank <= 0:
        raise ValueError(f"add_lora_params needs lora_rank > 0, got {cfg.lora_rank}")
    modules = lora_module_names(cfg.lora_targets)
    out = _copy_tree(params)
    targets = sorted(((p, n) for p, n in _walk_dense(out) if p[-1] in modules), key=lambda t: t[0])
    if not targets:
        raise ValueError(f"lora_targets {list(cfg.lora_targets)} match no dense layer in the params tree")
    seed = [int(v) for v in np.asarray(jax.random.key_data(rng)).ravel()]
    for index, (path, node) in enumerate(targets):
        if LORA_A in node or LORA_B in node:
            raise ValueError(f"{'/'.join(path)} already has LoRA leaves")
        fan_in, fan_out = node["kernel"].shape
        # Host-side NumPy draws: no per-shape compilation, same law as `lora_a_init`.
        bound = 1.0 / np.sqrt(fan_in)
        gen = np.random.default_rng(seed + [index])
        node[LORA_A] = gen.uniform(-bound, bound, (fan_in, cfg.lora_rank)).astype(np.float32)
        node[LORA_B] = np.zeros((cfg.lora_rank, fan_out), np.float32)
    return out


def lora_param_count(params: Mapping[str, Any]) -> int:
    """Number of trainable LoRA parameters in the tree."""
    return int(
        sum(np.prod(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(params) if is_lora_leaf(p))
    )


__all__: Sequence[str] = (
    "LoRADense",
    "LORA_TARGET_MODULES",
    "add_lora_params",
    "fold_lora",
    "has_lora",
    "is_lora_leaf",
    "lora_mask",
    "lora_module_names",
    "lora_param_count",
    "lora_scale",
    "path_names",
)

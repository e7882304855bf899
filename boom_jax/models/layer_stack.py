"""Run a model's transformer layers: a lax.scan over layers (or a Python loop), remat per layer.

The params stay per layer (`encoder/layer_{i}/...`, `layers_{i}/...`) at every boundary (init,
checkpoints, merging, HF maps, export), because merge methods work per tensor as mergekit does.
Inside the forward, `run_layers` stacks the layer subtrees on a leading axis (`jnp.stack`) and scans
one layer's module `.apply` over them, so XLA compiles one layer body whatever the depth, and
`jax.checkpoint` (cfg.remat) saves only each layer's input on every backend. Remat always scans;
without remat the scan is opt-in (cfg.scan_layers): at MiniLM's 6 layers XLA:CPU compiles the
scanned grad in 4.7 s of CPU against 3.6 s unrolled (measured under load), so the loop stays the
default for small models and the scan pays off with depth.

Cost of stacking inside the forward: one extra copy of the layer params (the stacked
[num_layers, ...] arrays) and, under jax.grad, one stacked copy of their gradients before they are
sliced back into per-layer leaves. Measured with XLA:CPU's memory analysis (tiny Qwen3, 8 layers of
3.0 MiB float32 params, activations negligible): float32 compute, 2.0 x the layer-param bytes of
temporaries under grad (48.0 MiB for 24.0 MiB; the unrolled loop: 0.45 MiB), 1.1 x forward only.
Kernels are stacked already cast to the compute dtype (each layer casts them anyway, so results are
unchanged): with bf16 compute the grad figure drops to 35.5 MiB on XLA:CPU, which converts bf16 dots
back to float32 (on GPU / TPU the kernels' share halves). The copy is sharded like the params (FSDP
divides it).

Dropout: every layer runs with its own key `fold_in(key, i)`, `key` drawn once from the "dropout"
stream of the calling module, in both the scan and the loop path; the masks come from the hash
dropout (dropout.py), so they are identical between the two paths, under vmap (stacked bag
members) and under any sharding.

Remat policies (cfg.remat_policy, REMAT_POLICIES): "nothing_saveable" (default: save the layer
input only, recompute the rest), "dots_with_no_batch_dims_saveable" (also keep the matmul outputs
without batch dimensions: the projections, not attention scores), "dots_saveable".
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from boom_jax.models.config import REMAT_POLICY_NAMES

# Names (config.REMAT_POLICY_NAMES) -> jax.checkpoint_policies of the same name.
REMAT_POLICIES: dict[str, Callable[..., Any]] = {
    name: getattr(jax.checkpoint_policies, name) for name in REMAT_POLICY_NAMES
}


def remat_policy(name: str) -> Callable[..., Any]:
    """The jax.checkpoint policy called `name` (a key of REMAT_POLICIES)."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={name!r}: expected one of {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


# Leaves that every layer casts to the compute dtype before use (Dense / LoRADense kernels and
# adapters): stacking them already cast changes no result and halves their stacked copy in bf16.
CAST_BEFORE_STACKING = frozenset({"kernel", "lora_a", "lora_b"})


def scans_layers(cfg: Any) -> bool:
    """Whether the layers run under lax.scan: cfg.scan_layers, and always with cfg.remat (an unrolled
    loop of rematerialized layers is not honoured by XLA:CPU, which schedules every recomputation
    before the backward pass)."""
    return bool(cfg.scan_layers or cfg.remat)


def stack_trees(trees: Sequence[Any], compute_dtype: Any = jnp.float32) -> Any:
    """Leaves of equally shaped trees stacked on a new leading axis; CAST_BEFORE_STACKING leaves in
    `compute_dtype`."""

    def stack(path, *leaves):
        name = str(getattr(path[-1], "key", path[-1]))
        dtype = compute_dtype if name in CAST_BEFORE_STACKING else None
        return jnp.stack([leaf.astype(dtype) if dtype is not None else leaf for leaf in leaves])

    return jax.tree_util.tree_map_with_path(stack, *trees)


def run_layers(
    parent: nn.Module,
    layer_cls: type[nn.Module],
    cfg: Any,
    names: Sequence[str],
    x: jax.Array,
    args: tuple,
    deterministic: bool,
) -> jax.Array:
    """x through the layers `names` (children of `parent`, built as `layer_cls(cfg)` and called as
    `layer(x, *args, deterministic)`), in order.

    At init the layers are called as named children (creating the per-layer params). Otherwise their
    params are read from `parent`'s variables and each layer is a pure `.apply`: under lax.scan over
    the stacked params when `scans_layers(cfg)`, else in a Python loop; wrapped in jax.checkpoint
    with cfg.remat_policy when cfg.remat.
    """
    if parent.is_initializing():
        for name in names:
            x = layer_cls(cfg, name=name)(x, *args, deterministic)
        return x
    params = parent.variables["params"]
    layer_params = [params[name] for name in names]
    key = parent.make_rng("dropout") if not deterministic and parent.has_rng("dropout") else None
    template = layer_cls(cfg, parent=None)

    def body(p, h, layer_key):
        rngs = {} if layer_key is None else {"dropout": layer_key}
        return template.apply({"params": p}, h, *args, deterministic, rngs=rngs)

    if cfg.remat:
        # Remat always runs under the scan, where prevent_cse is not needed (jax.checkpoint's docs).
        body = jax.checkpoint(body, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
    indices = jnp.arange(len(names), dtype=jnp.uint32)
    if scans_layers(cfg):
        keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)

        def step(h, p_and_key):
            p, layer_key = p_and_key
            return body(p, h, layer_key), None

        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        x, _ = jax.lax.scan(step, x, (stack_trees(layer_params, dtype), keys))
        return x
    for i, p in enumerate(layer_params):
        x = body(p, x, None if key is None else jax.random.fold_in(key, indices[i]))
    return x


__all__ = ["REMAT_POLICIES", "remat_policy", "run_layers", "stack_trees"]

"""The jitted, sharded train step and the jitted eval embedding.

Train state is a plain dict (a pytree that Orbax saves as is):
  params               the model params (nested dict of float32 arrays)
  opt_state            the optax state
  step                 int32, batches consumed (advances on skipped steps too)
  rng                  the base PRNG key; step ``s`` draws dropout with ``dropout_key(rng, s, impl)``
                       (a function of the base key and the step only), so a resumed run draws the same
                       masks
  skipped              int32, total updates skipped because the loss or a gradient was not finite
  consecutive_skipped  int32, skips in a row (reset by a good step; the loop stops after N)

Batches: ``query_ids``/``query_mask`` [B, Tq], ``passage_ids``/``passage_mask`` [B * G, Tp] in group
layout, ``in_batch_negatives`` (scalar or [B] bool; False = only the query's own group). Other keys
(``dataset_index`` ...) are ignored. ``B`` is the GLOBAL batch: on a mesh the step is one SPMD program
over all devices, the loss sees every device's passages (cross-device negatives) and is the mean over
the global batch.

Packed batches (boom_jax/packing.py; the batcher with packing=True): ``{side}_ids`` /
``{side}_segments`` [R, L], ``{side}_lengths`` [R, S] and ``{side}_index`` ([B] queries, [B * G]
passages) for side in (query, passage). The model embeds the rows to [R, S, D] (segment ids in place of
the mask, ``num_segments=S``) and each text's embedding is gathered by its index, shard by shard: rows
and indices are laid out for the batch shards of the mesh (("data", "fsdp")), so every device gathers
its own texts locally. The loss then runs on [B, D] and [B * G, D] exactly as for padded batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from boom_jax.training.grad_cache import EmbedFn, chunked_value_and_grad, grad_cache_value_and_grad
from boom_jax.training.loss import LossInputs, LossSpec, combined_loss
from boom_jax.training.sharding import (
    batch_axes,
    batch_sharding,
    param_shardings,
    path_string,
    replicated,
    state_shardings_like,
)

DROPOUT_RNG_IMPLS = ("rbg", "unsafe_rbg", "threefry")
"""Dropout key implementations. The models draw masks with a fused integer hash of the key
(boom_jax/models/dropout.py), so the implementation only changes how the per-step and per-layer keys
are derived (a few scalar ops): "threefry" (default) gives the same keys under vmap as alone, which
the stacked bag step relies on; "rbg" / "unsafe_rbg" re-key into XLA's RngBitGenerator."""

BATCH_KEYS = ("query_ids", "query_mask", "passage_ids", "passage_mask", "in_batch_negatives")
PACKED_KEYS = ("query_ids", "query_segments", "query_lengths", "query_index",
               "passage_ids", "passage_segments", "passage_lengths", "passage_index")
COUNTER_KEYS = ("step", "skipped", "consecutive_skipped")
# Optional per-batch loss inputs (boom_jax.training.loss.LossInputs), passed through when present:
# teacher scores [B * G] and the duplicate masks [B, B * G] / [B, B] of the batcher.
LOSS_INPUT_KEYS = ("teacher_scores", "false_negatives", "duplicate_queries")


def module_embed_fn(module: Any) -> EmbedFn:
    """An ``embed_fn(params, ids, mask, rng, num_segments=None)`` for a boom_jax model module (rng None =
    deterministic; ``num_segments`` S: ``mask`` holds segment ids and the result is [R, S, D])."""

    def embed(params, ids, mask, rng, num_segments=None):
        extra = {} if num_segments is None else {"num_segments": num_segments}
        if rng is None:
            return module.apply({"params": params}, ids, mask, deterministic=True, **extra)
        return module.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": rng}, **extra)

    return embed


def batch_shard_count(mesh: Mesh | None) -> int:
    """How many parts the batch's leading axis is split into on ``mesh`` (1 without a mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in batch_axes(mesh))


def is_packed(batch: Any) -> bool:
    """Whether a batch holds packed rows (``query_segments``) rather than padded texts."""
    return "query_segments" in batch


def gather_segments(rows: jax.Array, index: jax.Array, shards: int = 1) -> jax.Array:
    """Text embeddings [N, D] from packed rows' embeddings [R, S, D]: text ``i`` of shard ``k`` (texts
    and rows cut into ``shards`` equal contiguous blocks) is slot ``index[i]`` of shard ``k``'s rows,
    flattened as local_row * S + slot. A batched gather over the shard axis, so it stays on each device."""
    r, s, d = rows.shape
    if r % shards or index.shape[0] % shards:
        raise ValueError(f"packed batch: {r} rows and {index.shape[0]} texts do not split into {shards} shards")
    flat = rows.reshape(shards, (r // shards) * s, d)
    picked = jax.vmap(lambda block, idx: block[idx])(flat, index.reshape(shards, -1))
    return picked.reshape(-1, d)


def dropout_key(rng: jax.Array, step: jax.Array, impl: str = "threefry") -> jax.Array:
    """The dropout key of train step ``step``: ``fold_in(rng, step)``, re-keyed into ``impl``.

    Deterministic in (rng, step), so a resumed run draws the same masks. For "rbg" / "unsafe_rbg" the
    new key's data are 128 threefry bits of ``fold_in(rng, step)``. ``rng`` may be typed or raw."""
    if impl not in DROPOUT_RNG_IMPLS:
        raise ValueError(f"dropout rng implementation {impl!r}: expected one of {DROPOUT_RNG_IMPLS}")
    base = jax.random.fold_in(rng, step)
    if impl == "threefry":
        return base
    return jax.random.wrap_key_data(jax.random.bits(base, (4,), jnp.uint32), impl=impl)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> dict:
    """A fresh train state (see the module docstring). ``rng`` is a typed or raw PRNG key."""
    counter = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: the state is donated)
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": counter(),
        "rng": rng,
        "skipped": counter(),
        "consecutive_skipped": counter(),
    }


def train_state_shardings(
    params: Any, optimizer: optax.GradientTransformation, rng: jax.Array, mesh: Mesh, rules: Any
) -> dict:
    """NamedShardings for every leaf of the train state: params by ``rules``, optimizer moments like
    their params, counters and the rng replicated. ``params`` may be arrays or ShapeDtypeStructs."""
    p_shardings = param_shardings(params, mesh, rules)
    opt_shapes = jax.eval_shape(optimizer.init, params)
    rep = replicated(mesh)
    return {
        "params": p_shardings,
        "opt_state": state_shardings_like(opt_shapes, params, p_shardings, mesh),
        "step": rep,
        "rng": rep,
        "skipped": rep,
        "consecutive_skipped": rep,
    }


def prepare_batch(batch: dict, shards: int | None = None) -> dict:
    """The step's inputs from a batcher batch: the needed keys only, ``in_batch_negatives`` as [B] bool
    (so every input has the batch on its leading axis). Missing keys are an error naming them. A packed
    batch must have been packed for ``shards`` batch shards on this host (its ``pack_shards``), when
    both are known."""
    keys = PACKED_KEYS if is_packed(batch) else BATCH_KEYS[:4]
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"train batch lacks {missing}; it has {sorted(batch)}")
    if is_packed(batch):
        packed_for = batch.get("pack_shards")
        if shards is not None and packed_for is not None and int(packed_for) != shards:
            raise ValueError(f"packed batch laid out for {packed_for} batch shards per host, but the step's mesh "
                             f"splits each host's batch over {shards} (mesh data x fsdp / processes); build the "
                             f"batcher with pack_shards={shards}")
        b, n = np.shape(batch["query_index"])[0], np.shape(batch["passage_index"])[0]
    else:
        b, n = np.shape(batch["query_ids"])[0], np.shape(batch["passage_ids"])[0]
    if b == 0 or n % b:
        raise ValueError(f"train batch: {n} passages, not a multiple of the {b} queries")
    out = {k: batch[k] for k in keys}
    out.update({k: batch[k] for k in LOSS_INPUT_KEYS if k in batch})
    flag = batch.get("in_batch_negatives", True)
    if isinstance(flag, jax.Array):
        out["in_batch_negatives"] = jnp.broadcast_to(flag.astype(bool), (b,))
    else:
        out["in_batch_negatives"] = np.broadcast_to(np.asarray(flag, dtype=bool), (b,)).copy()
    return out


def _tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def batch_loss_inputs(batch: dict) -> LossInputs:
    """The loss inputs of a prepared batch besides the embeddings (absent keys = None)."""
    return LossInputs(batch["in_batch_negatives"], *(batch.get(k) for k in LOSS_INPUT_KEYS))


def make_update(
    embed_fn: EmbedFn,
    optimizer: optax.GradientTransformation,
    temperature: float,
    grad_cache_chunk: int | None = None,
    trainable: Callable[[str], bool] | None = None,
    batch_shards: int = 1,
    loss_spec: LossSpec | None = None,
) -> Callable[..., tuple[dict, dict]]:
    """``update(state, batch, rng, lr_scale=None) -> (new_state, metrics)``: one optimizer update, not jitted.

    The body every train step shares (the plain step below, each member of the stacked step): loss and
    gradients (backprop or gradient cache), frozen leaves zeroed, a non-finite loss or gradient skips
    the update (and zeroes the gradients first: they would poison the Adam moments), counters advance.
    ``lr_scale`` multiplies the optimizer's updates (for an optimizer that runs at learning rate 1).
    Metrics: loss, grad_norm (before clipping), skipped, consecutive_skipped.
    Packed batches (see the module docstring) are gathered per ``batch_shards`` (the mesh's batch shards);
    with the gradient cache their rows go in as many chunks as the queries would.
    """

    spec = LossSpec(temperature=temperature) if loss_spec is None else dataclasses.replace(
        loss_spec, temperature=temperature)

    def loss_and_grads(params, batch, rng):
        if is_packed(batch):
            return packed_loss_and_grads(params, batch, rng)
        loss_fn = lambda q, p: combined_loss(q, p, spec, batch_loss_inputs(batch))  # noqa: E731
        args = (params, batch["query_ids"], batch["query_mask"], batch["passage_ids"], batch["passage_mask"], rng)
        if not grad_cache_chunk:
            return chunked_value_and_grad(embed_fn, loss_fn, *args)
        return grad_cache_value_and_grad(embed_fn, loss_fn, *args, chunk_size=grad_cache_chunk)

    def packed_loss_and_grads(params, batch, rng):
        def side_embed(side):
            s = batch[f"{side}_lengths"].shape[1]
            return lambda p, ids, seg, r: embed_fn(p, ids, seg, r, num_segments=s)

        def loss_fn(q_rows, p_rows):
            q = gather_segments(q_rows, batch["query_index"], batch_shards)
            p = gather_segments(p_rows, batch["passage_index"], batch_shards)
            return combined_loss(q, p, spec, batch_loss_inputs(batch))

        args = (params, batch["query_ids"], batch["query_segments"], batch["passage_ids"], batch["passage_segments"],
                rng)
        if not grad_cache_chunk:
            return chunked_value_and_grad(side_embed("query"), loss_fn, *args,
                                          passage_embed_fn=side_embed("passage"))
        b = batch["query_index"].shape[0]
        if b % grad_cache_chunk:
            raise ValueError(f"grad cache: {b} queries are not a multiple of train.grad_cache_chunk={grad_cache_chunk}")
        chunks = b // grad_cache_chunk
        rows = {side: batch[f"{side}_ids"].shape[0] for side in ("query", "passage")}
        if any(r % (chunks * batch_shards) for r in rows.values()):
            raise ValueError(f"grad cache: packed rows {rows} do not split into {chunks} chunks on each of "
                             f"{batch_shards} batch shards; pack with pack_row_multiple={chunks}")
        return grad_cache_value_and_grad(side_embed("query"), loss_fn, *args, chunk_size=rows["query"] // chunks,
                                         passage_chunk_size=rows["passage"] // chunks,
                                         passage_embed_fn=side_embed("passage"))

    def update(state, batch, rng, lr_scale=None):
        params = state["params"]
        loss, grads = loss_and_grads(params, batch, rng)
        if trainable is not None:
            grads = jax.tree_util.tree_map_with_path(
                lambda p, g: g if trainable(path_string(p)) else jnp.zeros_like(g), grads
            )
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_opt_state = optimizer.update(safe_grads, state["opt_state"], params)
        if lr_scale is not None:
            updates = jax.tree.map(lambda u: jnp.asarray(lr_scale, u.dtype) * u, updates)
        new_params = optax.apply_updates(params, updates)
        skipped = (~finite).astype(jnp.int32)
        new_state = {
            "params": _tree_select(finite, new_params, params),
            "opt_state": _tree_select(finite, new_opt_state, state["opt_state"]),
            "step": state["step"] + 1,
            "rng": state["rng"],
            "skipped": state["skipped"] + skipped,
            "consecutive_skipped": jnp.where(finite, 0, state["consecutive_skipped"] + 1).astype(jnp.int32),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": skipped,
                   "consecutive_skipped": new_state["consecutive_skipped"]}
        return new_state, metrics

    return update


def make_train_step(
    embed_fn: EmbedFn,
    optimizer: optax.GradientTransformation,
    temperature: float,
    schedule: optax.Schedule | None = None,
    mesh: Mesh | None = None,
    state_shardings: dict | None = None,
    grad_cache_chunk: int | None = None,
    trainable: Callable[[str], bool] | None = None,
    donate: bool = True,
    dropout_rng: str = "threefry",
    loss_spec: LossSpec | None = None,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """``train_step(state, batch) -> (new_state, metrics)``, jitted (state donated).

    - ``embed_fn(params, ids, mask, rng)`` embeds a side of the batch (see :func:`module_embed_fn`).
    - ``temperature``: InfoNCE scores are cos / temperature (the paper uses 0.02).
    - ``schedule``: the optimizer's lr schedule, reported as ``metrics["lr"]`` (of the update applied).
    - ``mesh`` + ``state_shardings`` (from :func:`train_state_shardings`): state and outputs keep those
      shardings, batches are split over ("data", "fsdp"). Without a mesh: plain single-device jit.
    - ``grad_cache_chunk``: queries per gradient-cache chunk (global; passages go ``G`` times as many
      per chunk; packed rows go in the same number of chunks); None or 0 = plain backprop. The batch
      size must be a multiple of it.
    - ``trainable(path)``: leaves outside it get zero gradients (so XLA skips their weight gradients);
      pass the same predicate as the optimizer's.
    - ``dropout_rng``: the PRNG implementation of the dropout keys (see :data:`DROPOUT_RNG_IMPLS`,
      :func:`dropout_key`); config key ``train.dropout_rng``.
    - ``loss_spec``: the loss terms (config section ``loss``, boom_jax.training.loss.LossSpec; its
      temperature is replaced by ``temperature``); None = plain InfoNCE. Batches may carry the
      optional :data:`LOSS_INPUT_KEYS` (teacher scores, duplicate masks) it uses.
    Metrics: loss, grad_norm (global norm of the gradients before clipping), lr, skipped (1 if this
    update was skipped for a non-finite loss or gradient), consecutive_skipped.
    """
    if dropout_rng not in DROPOUT_RNG_IMPLS:
        raise ValueError(f"make_train_step: dropout_rng={dropout_rng!r}, expected one of {DROPOUT_RNG_IMPLS}")

    shards = batch_shard_count(mesh)
    update = make_update(embed_fn, optimizer, temperature, grad_cache_chunk, trainable, batch_shards=shards,
                         loss_spec=loss_spec)

    def step(state, batch):
        applied = state["step"] - state["skipped"]  # number of updates applied so far (optax count)
        new_state, metrics = update(state, batch, dropout_key(state["rng"], state["step"], dropout_rng))
        lr = schedule(applied) if schedule is not None else jnp.nan
        return new_state, {**metrics, "lr": jnp.asarray(lr, jnp.float32)}

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        jitted = jax.jit(step, donate_argnums=donate_argnums)
    else:
        if state_shardings is None:
            raise ValueError("make_train_step: a mesh needs state_shardings (see train_state_shardings)")
        rep = replicated(mesh)
        jitted = jax.jit(
            step,
            in_shardings=(state_shardings, batch_sharding(mesh)),
            out_shardings=(state_shardings, rep),
            donate_argnums=donate_argnums,
        )

    host_shards = shards // jax.process_count() if shards % jax.process_count() == 0 else None

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        return jitted(state, prepare_batch(batch, host_shards))

    train_step.jitted = jitted  # for .lower(...).compile().cost_analysis() in benchmarks
    return train_step


def make_eval_embed(
    embed_fn: EmbedFn,
    mesh: Mesh | None = None,
    params_sharding: Any = None,
) -> Callable[[Any, Any, Any], jax.Array]:
    """``embed(params, ids, mask) -> float32 [N, D]``, jitted, deterministic (no dropout).

    On a mesh, ids/mask are split over ("data", "fsdp") (N must be divisible by those shards) and the
    embeddings come back replicated; ``params_sharding`` (e.g. from ``param_shardings``) keeps params in
    place, otherwise they are taken as placed."""

    def embed(params, ids, mask):
        return embed_fn(params, ids, mask, None).astype(jnp.float32)

    if mesh is None:
        return jax.jit(embed)
    bs = batch_sharding(mesh)
    if params_sharding is None:
        jitted = jax.jit(embed, out_shardings=replicated(mesh))
    else:
        jitted = jax.jit(embed, in_shardings=(params_sharding, bs, bs), out_shardings=replicated(mesh))

    def sharded_embed(params, ids, mask):
        return jitted(params, jax.device_put(ids, bs), jax.device_put(mask, bs))

    return sharded_embed


__all__ = [
    "BATCH_KEYS",
    "DROPOUT_RNG_IMPLS",
    "PACKED_KEYS",
    "batch_shard_count",
    "dropout_key",
    "gather_segments",
    "is_packed",
    "init_train_state",
    "make_eval_embed",
    "make_train_step",
    "module_embed_fn",
    "prepare_batch",
    "train_state_shardings",
]

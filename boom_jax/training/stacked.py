"""All bag members in one program: member params stacked on a leading axis sharded over a mesh axis
named "member", and one jitted step that is the ordinary train step vmapped over that axis.

Each member keeps its own data (a Batcher over its subset), its own lr schedule (its own step
count) and its own optimizer state; inside a member the batch is split over ("data", "fsdp") and the
params placed by the usual sharding rules on the devices of its slice of the mesh. A member with
fewer steps than the longest stops updating: its update is masked by a per-member "active" flag.
The results equal training the members one after the other with the ordinary step, and each
member's model folder is written where the sequential path writes it (DIR/members/<name>/model),
so the merge runs unchanged.

The learning rate is passed into the step per member (evaluated on the host from the member's own
optax schedule at its number of applied updates), and the optimizer itself runs at lr 1: AdamW's
update scaled by lr afterwards is the same arithmetic as AdamW with the schedule inside.

Limits: all members must yield the same batch shapes (same batch size and group size; with
config.data.fixed_length=False right-padded models are padded to the longest member's buckets, and
left-padded ones need fixed_length=True); there is no mid-run checkpointing (re-running restarts);
one process only (multi-host runs train members sequentially or one per launch).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.atomic_io import write_json
from boom_jax.data.records import TrainDataset
from boom_jax.training.workdir_lock import holds_workdir_lock
from boom_jax.training.grad_cache import EmbedFn
from boom_jax.training.sharding import batch_axes
from boom_jax.packing import pad_packed_rows
from boom_jax.training.loss import LossSpec
from boom_jax.training.step import LOSS_INPUT_KEYS, PACKED_KEYS, batch_shard_count, is_packed, make_update, prepare_batch

MEMBER_AXIS = "member"
STEP_KEYS = ("query_ids", "query_mask", "passage_ids", "passage_mask", "in_batch_negatives")


@dataclasses.dataclass(frozen=True)
class StackedMember:
    """One member of a stacked run: its name (DIR/members/<name>), its training config and its subset
    (a SubsetManifest, or None for all examples)."""

    name: str
    config: ml_collections.ConfigDict
    subset: Any = None


# ---------------------------------------------------------------------------------------------------
# Mesh and shardings


def stacked_mesh(num_members: int, mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh ("member", M) x the config's ("data", "fsdp", "tensor") axes on the remaining devices."""
    from boom_jax.training.sharding import ShardingError, make_mesh

    devices = list(jax.devices() if devices is None else devices)
    if num_members < 1 or len(devices) % num_members:
        raise ShardingError(f"{num_members} stacked members cannot split {len(devices)} devices evenly; "
                            f"use a device count divisible by the number of members")
    spec = ((MEMBER_AXIS, num_members), ("data", mesh_config.data), ("fsdp", mesh_config.fsdp),
            ("tensor", mesh_config.tensor))
    return make_mesh(spec, devices, key="config.mesh (with the member axis)")


def _stack_spec(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(sharding.mesh, P(MEMBER_AXIS, *sharding.spec))


def stacked_state_shardings(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                            rules: Any) -> dict:
    """Shardings of a stacked train state: each member's usual sharding with "member" in front.
    `params` are ONE member's (arrays or ShapeDtypeStructs)."""
    from boom_jax.training.step import train_state_shardings

    one = train_state_shardings(params, optimizer, rng, mesh, rules)
    return jax.tree.map(_stack_spec, one, is_leaf=lambda x: isinstance(x, NamedSharding))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """[M, B, ...] inputs: members over "member", each member's batch over ("data", "fsdp")."""
    return NamedSharding(mesh, P(MEMBER_AXIS, batch_axes(mesh)))


def init_stacked_state(member_params: Sequence[Any], optimizer: optax.GradientTransformation, rng: jax.Array,
                       shardings: dict) -> dict:
    """The stacked train state (see boom_jax.training.step) from each member's initial params."""
    from boom_jax.training.step import init_train_state

    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *member_params)
    stacked = jax.device_put(stacked, shardings["params"])
    rngs = jnp.stack([rng] * len(member_params))
    return jax.jit(jax.vmap(lambda p, r: init_train_state(p, optimizer, r)), out_shardings=shardings)(stacked, rngs)


# ---------------------------------------------------------------------------------------------------
# The step


def make_stacked_train_step(
    embed_fn: EmbedFn,
    optimizer: optax.GradientTransformation,
    temperature: float,
    mesh: Mesh,
    state_shardings: dict,
    grad_cache_chunk: int | None = None,
    trainable: Callable[[str], bool] | None = None,
    loss_spec: LossSpec | None = None,
) -> Callable[[dict, dict, Any, Any], tuple[dict, dict]]:
    """``step(state, batch, active, lr) -> (new_state, metrics)`` over M stacked members, jitted.

    ``optimizer`` must run at learning rate 1 (e.g. ``make_optimizer(1.0, 1, decay="constant", ...)``);
    ``lr`` [M] is each member's learning rate for this update, ``active`` [M] bool masks members that
    have finished (their state is returned unchanged, counters included). ``batch`` holds the step's
    keys stacked to [M, B, ...] (``in_batch_negatives`` [M, B]). Metrics are [M] arrays: loss,
    grad_norm, lr, skipped, consecutive_skipped. The per-member body is the ordinary step's
    (boom_jax.training.step.make_train_step).
    """

    update = make_update(embed_fn, optimizer, temperature, grad_cache_chunk, trainable,
                         batch_shards=batch_shard_count(mesh), loss_spec=loss_spec)

    def member_step(state, batch, active, lr):
        # threefry: the same bits under vmap as unbatched (rbg is not), so a stacked member draws what it
        # would draw alone with train.dropout_rng="threefry"
        rng = jax.random.fold_in(state["rng"], state["step"])
        stepped, metrics = update(state, batch, rng, lr_scale=lr)  # the optimizer ran at lr 1
        new_state = jax.tree.map(lambda x, y: jnp.where(active, x, y), stepped, state)
        metrics = {**metrics, "lr": jnp.asarray(lr, jnp.float32), "skipped": jnp.where(active, metrics["skipped"], 0),
                   "consecutive_skipped": new_state["consecutive_skipped"]}
        return new_state, metrics

    batch_sh = stacked_batch_sharding(mesh)
    member_sh = NamedSharding(mesh, P(MEMBER_AXIS))
    jitted = jax.jit(
        jax.vmap(member_step),
        in_shardings=(state_shardings, batch_sh, member_sh, member_sh),
        out_shardings=(state_shardings, member_sh),
        donate_argnums=(0,),
    )

    def step(state: dict, batch: dict, active: Any, lr: Any) -> tuple[dict, dict]:
        keys = (*PACKED_KEYS, "in_batch_negatives") if is_packed(batch) else STEP_KEYS
        keys += tuple(k for k in LOSS_INPUT_KEYS if k in batch)
        return jitted(state, {k: batch[k] for k in keys}, np.asarray(active, bool),
                      np.asarray(lr, np.float32))

    step.jitted = jitted
    return step


# ---------------------------------------------------------------------------------------------------
# Batches


def _pad_to(x: np.ndarray, length: int, left: bool) -> np.ndarray:
    pad = length - x.shape[1]
    if pad == 0:
        return x
    return np.pad(x, ((0, 0), (pad, 0) if left else (0, pad)))


def stack_batches(batches: Sequence[dict], names: Sequence[str], padding_side: str = "right") -> dict:
    """One [M, ...] batch from M members' batches (prepare_batch'ed). Token axes are padded to the
    longest member's (right padding only); other shape differences are an error naming the members."""
    if all(is_packed(b) for b in batches):
        return _stack_packed(batches, names)
    batches = [prepare_batch(b) for b in batches]
    out = {}
    for key in STEP_KEYS:
        arrays = [np.asarray(b[key]) for b in batches]
        if key.endswith(("_ids", "_mask")):
            rows = {a.shape[0] for a in arrays}
            longest = max(a.shape[1] for a in arrays)
            if len(rows) > 1:
                raise ValueError(f"stacked members' batches differ in {key} rows "
                                 f"{dict(zip(names, (a.shape[0] for a in arrays)))}: all members need the same "
                                 f"batch size and group size (dataset hard_negatives)")
            if any(a.shape[1] != longest for a in arrays):
                if padding_side != "right":
                    raise ValueError(f"stacked members' {key} lengths differ "
                                     f"{dict(zip(names, (a.shape[1] for a in arrays)))} and the model pads on the "
                                     f"left; set config.data.fixed_length=True")
                arrays = [_pad_to(a, longest, left=False) for a in arrays]
        out[key] = np.stack(arrays)
    for key in LOSS_INPUT_KEYS:  # teacher scores, duplicate masks: same shapes in every member
        if all(key in b for b in batches):
            out[key] = np.stack([np.asarray(b[key]) for b in batches])
    return out


def _stack_packed(batches: Sequence[dict], names: Sequence[str]) -> dict:
    """Packed members' batches stacked: each side grown to the most rows per shard of any member (empty
    rows at the end of every shard's block), so all members run in one program."""
    shards = {int(b["pack_shards"]) for b in batches}
    if len(shards) > 1:
        raise ValueError(f"stacked members' batches are packed for different shard counts {sorted(shards)}")
    (shards,) = shards
    grown = [dict(b) for b in batches]
    for side in ("query", "passage"):
        fields = ("ids", "segments", "lengths", "index")
        packed = [{f: np.asarray(b[f"{side}_{f}"]) for f in fields} for b in batches]
        widths = {(p["ids"].shape[1], p["lengths"].shape[1], p["index"].shape[0]) for p in packed}
        if len(widths) > 1:
            raise ValueError(f"stacked members' packed {side} rows differ in (row length, segments, texts) "
                             f"{dict(zip(names, ((p['ids'].shape[1], p['lengths'].shape[1], p['index'].shape[0]) for p in packed)))}: "
                             f"all members need the same batch size, group size and data.pack_* settings")
        rows = max(p["ids"].shape[0] for p in packed) // shards
        for g, p in zip(grown, packed):
            g.update({f"{side}_{f}": v for f, v in pad_packed_rows(p, shards, rows).items()})
    prepared = [prepare_batch(b) for b in grown]
    return {key: np.stack([np.asarray(b[key]) for b in prepared]) for key in prepared[0]}


# ---------------------------------------------------------------------------------------------------
# The driver


@holds_workdir_lock  # one run of this workflow per workdir
def train_stacked(config: ml_collections.ConfigDict, workdir: str, members: Sequence[StackedMember],
                  datasets: Sequence[TrainDataset] | None = None) -> list[dict]:
    """Trains every member of a bag at once on a ("member", M) x data-parallel mesh.

    `config` is the bag's config (model, mesh, optimizer settings); each member's own config gives
    its subset ratio/seed and name. Writes DIR/members/<name>/{config.json, subset_manifest.json,
    metrics.jsonl, model/ (and export/ when config.export.sentence_transformers)} like the sequential
    path. Returns one record per member: name, steps, examples, subset_examples, final_loss,
    wall_time_s (the shared wall time), model (its model folder).
    """
    from boom_jax.data.batcher import Batcher
    from boom_jax.data.schedules import SCHEDULES
    from boom_jax.data.token_store import default_token_cache_dir
    from boom_jax.models import build_model
    from boom_jax.tokenization import TextTokenizer, load_tokenizer
    from boom_jax.training.config_validation import ConfigError, validate_config
    from boom_jax.training.loop import (
        build_optimizer,
        config_to_dict,
        load_model_for_training,
        load_train_datasets,
        packing_options,
        prepare_datasets,
        resolve_model_path,
        schedule_options,
        write_outputs,
    )
    from boom_jax.training.metrics import MetricsWriter
    from boom_jax.training.optim import make_optimizer
    from boom_jax.training.sharding import DEFAULT_RULES
    from boom_jax.training.loss import run_loss_spec
    from boom_jax.training.provenance import training_provenance
    from boom_jax.training.step import module_embed_fn

    if not members:
        raise ValueError("train_stacked needs at least one member")
    m = len(members)
    if jax.device_count() % m:
        raise ConfigError(f"{m} stacked members need a device count divisible by {m}, got {jax.device_count()}")
    if jax.process_count() > 1:
        raise ConfigError("stacked bag training runs in one process (each host would have to load whole "
                          "member batches); train the members sequentially or one per launch "
                          "(config.bag.member) on multi-host setups")
    validate_config(config, jax.device_count() // m, schedules=SCHEDULES)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    rng = jax.random.PRNGKey(config.seed)
    cfg, params, tokenizer_dir = load_model_for_training(config, rng)
    if datasets is None:
        datasets = load_train_datasets(config)

    tokenizer = load_tokenizer(tokenizer_dir)
    max_len = cfg.max_position_embeddings if cfg.arch == "bert" else 1 << 30
    query_len, passage_len = min(config.data.query_max_len, max_len), min(config.data.passage_max_len, max_len)
    fixed = config.data.fixed_length
    query_tok = TextTokenizer(tokenizer, query_len, cfg.padding_side, cfg.append_eos,
                              buckets=(query_len,) if fixed else None)
    passage_tok = TextTokenizer(tokenizer, passage_len, cfg.padding_side, cfg.append_eos,
                                buckets=(passage_len,) if fixed else None)

    try:  # the members share the loss (as the sequential loop builds it)
        loss_spec = run_loss_spec(config.loss, config.train.temperature, cfg.embedding_dim, datasets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    batchers, schedules, totals, dirs, writers, member_sets = [], [], [], [], [], []
    for member in members:
        member_dir = os.path.join(workdir, "members", member.name)
        os.makedirs(member_dir, exist_ok=True)
        mc = member.config
        if is_main:
            write_json(os.path.join(member_dir, "config.json"), config_to_dict(mc))
        train_sets = prepare_datasets(mc, member_dir, datasets, member.subset)
        member_sets.append(train_sets)
        batcher = Batcher(train_sets, query_tok, passage_tok, mc.train.batch_size,
                          group_size=mc.data.train_group_size, schedule=mc.data.schedule, seed=mc.seed,
                          schedule_options=schedule_options(mc, train_sets), num_epochs=None if mc.train.max_steps else mc.train.epochs,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          token_cache_dir=mc.data.token_cache_dir or default_token_cache_dir(member_dir),
                          teacher_scores=loss_spec.needs_teacher_scores, duplicate_masks=loss_spec.mask_duplicates,
                          no_duplicates=mc.data.no_duplicates,
                          **packing_options(mc, batch_shard_count(stacked_mesh(m, config.mesh))))
        total = mc.train.max_steps or batcher.total_steps
        schedules.append(build_optimizer(mc, cfg, total)[1])
        batchers.append(batcher)
        totals.append(int(total))
        dirs.append(member_dir)
        writers.append(MetricsWriter(member_dir, config.log.tensorboard, enabled=is_main))

    trainable = None
    if cfg.lora_rank > 0:
        from boom_jax.models.lora import is_lora_leaf

        trainable = is_lora_leaf
    optimizer, _ = make_optimizer(1.0, 1, warmup_steps=0, decay="constant", weight_decay=config.train.weight_decay,
                                  clip_norm=config.train.max_grad_norm or None, trainable=trainable)
    mesh = stacked_mesh(m, config.mesh)
    shardings = stacked_state_shardings(params, optimizer, rng, mesh, DEFAULT_RULES[cfg.arch])
    state = init_stacked_state([params] * m, optimizer, rng, shardings)
    del params
    step_fn = make_stacked_train_step(module_embed_fn(build_model(cfg)), optimizer, config.train.temperature, mesh,
                                      shardings, grad_cache_chunk=config.train.grad_cache_chunk or None,
                                      trainable=trainable, loss_spec=loss_spec)

    applied = [0] * m
    last_batches: list[dict | None] = [None] * m
    last_loss = [float("nan")] * m
    names = [mb.name for mb in members]
    longest = max(totals)
    bar = None
    if is_main and config.log.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=longest, desc=f"{config.name} ({m} members)", unit="step", dynamic_ncols=True)
    start = time.time()
    try:
        for step in range(longest):
            active = [step < t for t in totals]
            for i, batcher in enumerate(batchers):
                if active[i]:
                    last_batches[i] = next(batcher)
            lr = [float(schedules[i](applied[i])) for i in range(m)]
            batch = stack_batches(last_batches, names, cfg.padding_side)
            state, metrics = step_fn(state, batch, active, lr)
            metrics = jax.device_get(metrics)
            for i in range(m):
                if not active[i]:
                    continue
                applied[i] += 1 - int(metrics["skipped"][i])
                loss = float(metrics["loss"][i])
                if np.isfinite(loss):
                    last_loss[i] = loss
                if (step + 1) % config.train.log_every == 0 or step + 1 == totals[i]:
                    writers[i].write(step + 1, {"loss": loss, "lr": float(metrics["lr"][i]),
                                                "grad_norm": float(metrics["grad_norm"][i])})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=" ".join(f"{x:.3f}" for x in last_loss))
    finally:
        if bar is not None:
            bar.close()
        for w in writers:
            w.close()
    wall = round(time.time() - start, 2)

    from boom_jax.training.distributed import to_host

    host_params = to_host(state["params"])
    records = []
    for i, member in enumerate(members):
        params_i = jax.tree.map(lambda x: x[i], host_params)
        if is_main:
            provenance = training_provenance(member.config, member_sets[i], steps=totals[i], wall_time_s=wall,
                                             workdir=dirs[i], model_dir=resolve_model_path(member.config.model.path))
            write_outputs(member.config, dirs[i], cfg, params_i, tokenizer_dir, provenance)
        subset_examples = (int(sum(len(v) for v in member.subset.indices.values())) if member.subset is not None
                           else int(sum(len(d.examples) for d in datasets)))
        records.append({"name": member.name, "steps": totals[i],
                        "examples": totals[i] * int(member.config.train.batch_size),
                        "subset_examples": subset_examples, "final_loss": last_loss[i], "wall_time_s": wall,
                        "model": os.path.join(dirs[i], "model")})
    return records


__all__ = ["MEMBER_AXIS", "StackedMember", "init_stacked_state", "make_stacked_train_step", "stack_batches",
           "stacked_batch_sharding", "stacked_mesh", "stacked_state_shardings", "train_stacked"]

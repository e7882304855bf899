"""The one training loop, and the hooks both the plain run and the stacked bag run in it.

    result = run_loop(program, state, start_step, hooks)

`Program` says what one step is: `next_batch(i)` (the host batch of step i, 0-based), `step(state,
batch) -> (state, host-side metrics)` and `data_state()` (the data position a checkpoint stores).
The loop runs steps until `program.total_steps` or a SIGTERM / SIGINT (then it stops after the
current step with `preempted=True`), calling every hook in order after each step:

- `NonFiniteStop`: too many skipped (non-finite) updates in a row -> NonFiniteLossError naming the
  last good checkpoint (metrics may be per member, [M]).
- `MetricsHook`: windowed loss, lr (from the host schedule), grad norm, tokens / examples / steps per
  second, MFU, skipped updates and per-dataset losses to a MetricsWriter every config.train.log_every
  steps (and at the last step).
- `CheckpointHook`: saves every config.checkpoint.every_steps, at the last step, and where the loop
  stops (preemption, end); waits for pending writes at the end.
- `DevEvalHook`: dev nDCG@10 at step 0 of a fresh run, every config.eval.every_steps and at the end.
- `ProgressHook`: a tqdm bar on process 0.
- `metrics_hook(config, setup, ...)`, `dev_eval_hook(config, setup, ...)`: those two hooks as a run's
  config and RunSetup ask for them.
- `MemberHooks`: per-member hooks of a stacked run, each seeing member i's metrics, batch and params
  ([M]-leading arrays sliced), called only while the member is active (step <= its total).

Hook methods (all optional): `start(loop)`, `after_step(loop)`, `end(loop)`, `close()`; `loop` is
the `LoopState` (state, step, total_steps, metrics, batch, preempted, start_step).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from boom_jax.data.batcher import batch_tokens
from boom_jax.data.records import EvalTask
from boom_jax.training.checkpoint import TrainCheckpointer
from boom_jax.training.metrics import MetricsWriter
from boom_jax.training.preemption import PreemptionGuard
from boom_jax.training.throughput import count_matmul_params, peak_flops_per_device, train_flops_per_token


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""

    exit_code = 1  # the commands report it in one line; a failed run, not bad input (boom_jax.cli)


@dataclasses.dataclass
class Program:
    """What one training step is (see the module docstring)."""

    total_steps: int
    next_batch: Callable[[int], Any]
    step: Callable[[dict, Any], tuple[dict, dict]]
    data_state: Callable[[], dict]


@dataclasses.dataclass
class LoopState:
    """What the hooks see: the state after `step` completed steps, the last metrics (host) and batch."""

    state: dict
    step: int
    total_steps: int
    start_step: int
    metrics: dict | None = None
    batch: Any = None
    preempted: bool = False

    @property
    def params(self) -> Any:
        return self.state["params"]


class Hook:
    """A no-op hook; subclasses override what they need."""

    def start(self, loop: LoopState) -> None:
        pass

    def after_step(self, loop: LoopState) -> None:
        pass

    def end(self, loop: LoopState) -> None:
        pass

    def close(self) -> None:
        pass


def run_loop(program: Program, state: dict, start_step: int, hooks: Sequence[Hook]) -> LoopState:
    """Runs `program` from `start_step` to its end (or a preemption signal); returns the final LoopState.
    Hooks' `close` runs whatever happens; `end` only when the loop stopped normally or was preempted."""
    loop = LoopState(state=state, step=start_step, total_steps=program.total_steps, start_step=start_step)
    try:
        for hook in hooks:
            hook.start(loop)
        with PreemptionGuard() as guard:
            while loop.step < program.total_steps:
                batch = program.next_batch(loop.step)
                loop.state, metrics = program.step(loop.state, batch)
                loop.step += 1
                loop.metrics, loop.batch = jax.device_get(metrics), batch
                for hook in hooks:
                    hook.after_step(loop)
                if guard.requested:
                    if jax.process_index() == 0:
                        logging.warning("%s received at step %d: saving a checkpoint and stopping",
                                        guard.signal_name, loop.step)
                    loop.preempted = True
                    break
        for hook in hooks:
            hook.end(loop)
    finally:
        for hook in hooks:
            hook.close()
    return loop


# ---------------------------------------------------------------------------------------------------
# Hooks


class CheckpointHook(Hook):
    """Saves the state and `data_state()` every `every_steps` of the checkpointer, at the last step and
    where the loop stops; `end` waits for the writes."""

    def __init__(self, checkpointer: TrainCheckpointer, data_state: Callable[[], dict], config_json: dict):
        self.checkpointer, self.data_state, self.config_json = checkpointer, data_state, config_json

    def _save(self, loop: LoopState) -> None:
        self.checkpointer.save(loop.step, loop.state, self.data_state(), self.config_json)

    def after_step(self, loop: LoopState) -> None:
        if self.checkpointer.should_save(loop.step) or loop.step == loop.total_steps:
            self._save(loop)

    def end(self, loop: LoopState) -> None:
        if loop.step and self.checkpointer.latest_step() != loop.step:
            self._save(loop)
        self.checkpointer.wait()

    def close(self) -> None:
        self.checkpointer.close()


class NonFiniteStop(Hook):
    """Stops the run when `max_consecutive` updates in a row were skipped for a non-finite loss or
    gradient (any member, for stacked metrics), naming the last good checkpoint."""

    def __init__(self, max_consecutive: int, checkpointer: TrainCheckpointer, names: Sequence[str] | None = None):
        self.max_consecutive, self.checkpointer, self.names = max_consecutive, checkpointer, names

    def after_step(self, loop: LoopState) -> None:
        counts = np.atleast_1d(np.asarray(loop.metrics["consecutive_skipped"]))
        worst = int(np.argmax(counts))
        if int(counts[worst]) < self.max_consecutive:
            return
        self.checkpointer.wait()
        good = self.checkpointer.latest_step()
        who = f"member {self.names[worst]}: " if self.names else ""
        raise NonFiniteLossError(
            f"{who}{int(counts[worst])} steps in a row had a non-finite loss or gradient "
            f"(config.train.max_consecutive_skips={self.max_consecutive}), stopping at step {loop.step}; the last "
            f"good checkpoint is "
            + (f"step {good} in {self.checkpointer.directory}" if good else "none (no checkpoint was saved yet)")
            + ". Lower config.train.learning_rate or check the data.")


class MetricsHook(Hook):
    """Windowed training metrics to `writer` every `log_every` steps and at the last step.

    `schedule(applied updates)` gives the logged lr; `skipped` is the state's skip count at the start;
    `flops_per_token` x computed tokens / `peak_flops` is the MFU; `dataset_names` name the per-dataset
    losses (batch["dataset_id"]). `bar` (tqdm) shows the window's loss, tokens/s and lr."""

    def __init__(self, writer: MetricsWriter, log_every: int, schedule: Callable[[int], Any], skipped: int,
                 dataset_names: Sequence[str], flops_per_token: float, peak_flops: float, bar: Any = None):
        self.writer, self.log_every, self.schedule = writer, log_every, schedule
        self.skipped_total = skipped
        self.dataset_names, self.flops_per_token, self.peak_flops, self.bar = (dataset_names, flops_per_token,
                                                                              peak_flops, bar)
        self.last_loss = float("nan")  # the last finite step loss (a resumed stacked run sets the saved one)
        self._reset()

    def _reset(self) -> None:
        self.window: dict[str, list] = {"loss": [], "tokens": [], "padded": [], "examples": [], "skipped": []}
        self.per_dataset: dict[str, list[float]] = {}
        self.window_start = time.perf_counter()

    def restart_clock(self) -> None:
        """Time spent outside training (a dev evaluation) does not count towards throughput."""
        self.window_start = time.perf_counter()

    def start(self, loop: LoopState) -> None:
        self.restart_clock()

    def after_step(self, loop: LoopState) -> None:
        metrics, batch = loop.metrics, loop.batch
        applied = loop.step - 1 - self.skipped_total  # updates applied before this step (the optimizer's count)
        self.skipped_total += int(metrics["skipped"])
        loss = float(metrics["loss"])
        w = self.window
        w["loss"].append(loss)
        w["skipped"].append(int(metrics["skipped"]))
        real_tokens, computed_tokens = batch_tokens(batch)
        w["tokens"].append(real_tokens)
        w["padded"].append(computed_tokens)
        w["examples"].append(int(batch["query_ids"].shape[0]))
        if batch["dataset_id"] >= 0 and np.isfinite(loss):
            self.per_dataset.setdefault(self.dataset_names[batch["dataset_id"]], []).append(loss)
        if np.isfinite(loss):
            self.last_loss = loss
        if loop.step % self.log_every and loop.step != loop.total_steps:
            return
        elapsed = time.perf_counter() - self.window_start
        hosts = jax.process_count()
        tokens_s = sum(w["tokens"]) * hosts / elapsed
        flops = self.flops_per_token * sum(w["padded"]) * hosts
        record = {
            "loss": float(np.nanmean(w["loss"])) if np.isfinite(w["loss"]).any() else np.nan,
            "lr": float(self.schedule(applied)), "grad_norm": float(metrics["grad_norm"]),
            "tokens_per_s": tokens_s, "examples_per_s": sum(w["examples"]) * hosts / elapsed,
            "steps_per_s": len(w["loss"]) / elapsed, "mfu": flops / elapsed / self.peak_flops,
            "skipped": float(sum(w["skipped"])),
            **{f"loss/{name}": float(np.mean(v)) for name, v in self.per_dataset.items()},
        }
        self.writer.write(loop.step, record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_s:.0f}", lr=f"{record['lr']:.2e}")
        self._reset()

    def close(self) -> None:
        self.writer.close()


class DevEvalHook(Hook):
    """Dev scores (`evaluate(params) -> {task: nDCG@10}`) at step 0 of a fresh run (with every_steps),
    every `every_steps` and at the end (`at_end`, unless the last step was just evaluated); written to
    `writer` as dev/ndcg_at_10/<task>. `on_done` runs after each evaluation (restarts the metrics clock)."""

    def __init__(self, evaluate: Callable[[Any], dict], writer: MetricsWriter, every_steps: int, at_end: bool,
                 on_done: Callable[[], None] = lambda: None):
        self.evaluate, self.writer, self.every_steps, self.at_end, self.on_done = (evaluate, writer, every_steps,
                                                                                   at_end, on_done)
        self.scores: dict[str, float] = {}

    def _run(self, loop: LoopState) -> None:
        self.scores = self.evaluate(loop.params)
        self.writer.write(loop.step, {f"dev/ndcg_at_10/{k}": v for k, v in self.scores.items()})
        self.on_done()

    def start(self, loop: LoopState) -> None:
        if self.every_steps and loop.start_step == 0:
            self._run(loop)  # the starting point, for comparison

    def after_step(self, loop: LoopState) -> None:
        if self.every_steps and loop.step % self.every_steps == 0:
            self._run(loop)

    def end(self, loop: LoopState) -> None:
        just_done = self.every_steps and loop.step % self.every_steps == 0 and self.scores
        if not loop.preempted and self.at_end and not just_done:
            self._run(loop)


class ProgressHook(Hook):
    """A progress bar (tqdm) advanced once per step; `bar` may be None (not process 0, or turned off)."""

    def __init__(self, bar: Any):
        self.bar = bar

    def after_step(self, loop: LoopState) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on process 0 when `enabled`, else None."""
    if not (enabled and jax.process_index() == 0):
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


@dataclasses.dataclass
class _MemberView:
    """Member i's view of a stacked LoopState."""

    loop: LoopState
    index: int
    total_steps: int
    batch: Any  # member i's own host batch of the last step

    @property
    def step(self) -> int:
        return min(self.loop.step, self.total_steps)

    @property
    def start_step(self) -> int:
        return min(self.loop.start_step, self.total_steps)

    @property
    def preempted(self) -> bool:
        return self.loop.preempted and self.loop.step < self.total_steps

    @property
    def metrics(self) -> dict:
        return {k: np.asarray(v)[self.index] for k, v in self.loop.metrics.items()}

    @property
    def params(self) -> Any:
        return jax.tree.map(lambda x: x[self.index], self.loop.state["params"])


class MemberHooks(Hook):
    """Per-member hooks of a stacked run: `hooks[i]` sees member i (metrics [M] sliced, its own batch
    `member_batch(loop.batch, i)`, its params) while the loop's step is within `totals[i]`."""

    def __init__(self, hooks: Sequence[Sequence[Hook]], totals: Sequence[int],
                 member_batch: Callable[[Any, int], Any]):
        self.hooks, self.totals, self.member_batch = hooks, list(totals), member_batch

    def _views(self, loop: LoopState, active_only: bool):
        for i, hooks in enumerate(self.hooks):
            if active_only and loop.step > self.totals[i]:
                continue
            batch = None if loop.batch is None else self.member_batch(loop.batch, i)
            yield _MemberView(loop, i, self.totals[i], batch), hooks

    def start(self, loop: LoopState) -> None:
        for view, hooks in self._views(loop, active_only=False):
            for hook in hooks:
                hook.start(view)

    def after_step(self, loop: LoopState) -> None:
        for view, hooks in self._views(loop, active_only=True):
            for hook in hooks:
                hook.after_step(view)

    def end(self, loop: LoopState) -> None:
        for view, hooks in self._views(loop, active_only=False):
            for hook in hooks:
                hook.end(view)

    def close(self) -> None:
        for hooks in self.hooks:
            for hook in hooks:
                hook.close()


# ---------------------------------------------------------------------------------------------------
# Hooks from a config and a RunSetup (training/run_setup.py)


def dev_eval_hook(config: ml_collections.ConfigDict, setup, writer: MetricsWriter,
                  eval_tasks: Sequence[EvalTask] | None, on_done) -> DevEvalHook | None:
    """The dev evaluation of config.eval (None when neither every_steps nor at_end asks for it)."""
    if not (config.eval.every_steps or config.eval.at_end):
        return None
    from boom_jax.training.dev_eval import DevEvaluator  # lazy: evaluation imports mteb (seconds), only for dev scores

    evaluator = DevEvaluator(config, setup.model_config, setup.tokenizer, eval_tasks)
    return DevEvalHook(evaluator, writer, config.eval.every_steps, config.eval.at_end, on_done)


def metrics_hook(config: ml_collections.ConfigDict, setup, writer: MetricsWriter, params: Any,
                 skipped: int, bar: Any = None, devices: int | None = None) -> MetricsHook:
    """The run's MetricsHook: lr from `setup.schedule`, MFU against the peak of `devices` (default all)."""
    flops_per_token = train_flops_per_token(count_matmul_params(params), setup.trainable is None,
                                            bool(config.train.grad_cache_chunk))
    peak = peak_flops_per_device() * (devices or jax.device_count())
    return MetricsHook(writer, config.train.log_every, setup.schedule, skipped, [d.name for d in setup.train_sets],
                       flops_per_token, peak, bar)


__all__ = ["CheckpointHook", "DevEvalHook", "Hook", "LoopState", "MemberHooks", "MetricsHook", "NonFiniteLossError",
           "NonFiniteStop", "Program", "ProgressHook", "dev_eval_hook", "metrics_hook", "progress_bar", "run_loop"]

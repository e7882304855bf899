"""Orbax checkpoints of the training state under WORKDIR/checkpoints.

Each checkpoint step holds four items: `params` (the model tree), `train_state` (optimizer state,
step, rng, skip counters: the rest of the state dict), `data` (the batcher's JSON state, so a
resumed run sees exactly the remaining batches) and `config` (the run's config as JSON).
Saves are asynchronous by default; Orbax writes each step into a temporary folder and renames it
when complete, so a run killed mid-save leaves the previous checkpoints intact (the temporary
folder is ignored and cleaned up on the next start). `latest_params` restores params only, and
every restore accepts target shardings, so a run can resume on a different mesh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # unreadable steps are moved here (kept for inspection, out of Orbax's way)


def _warn(message: str, *args) -> None:
    """A warning about the run's checkpoints, once (process 0; every host restores the same step)."""
    if jax.process_index() == 0:
        absl_logging.warning(message, *args)


class CheckpointError(RuntimeError):
    """No intact checkpoint to resume from (the message lists each step and why it is unreadable)."""
ITEMS = ("params", "train_state", "data", "config")


def _handlers() -> dict:
    return {"params": ocp.StandardCheckpointHandler(), "train_state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, item_handlers=_handlers(),
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0))


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys are stored as their raw uint32 data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(restored: Any, like: Any) -> Any:
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                        restored, like)


def _with_shapes(tree: Any) -> Any:
    """An abstract target from a concrete (possibly sharded) state, keys replaced by key data."""
    def one(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    return jax.tree.map(one, tree)


class TrainCheckpointer:
    """Saves and restores the training state of one run (one workdir)."""

    def __init__(self, workdir: str, every_steps: int = 500, keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        self.every_steps = every_steps
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=_handlers(), options=self._options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.every_steps == 0

    def save(self, step: int, state: dict, data_state: dict, config: dict) -> None:
        """Start saving `state` (a dict with "params" and the rest) at `step`; returns once the
        arrays are copied off the devices, the write continues in the background."""
        params = state["params"]
        rest = _keys_to_data({k: v for k, v in state.items() if k != "params"})
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                train_state=ocp.args.StandardSave(rest),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )

    def restore(self, target_state: dict, step: int | None = None) -> tuple[dict, dict, dict]:
        """Restore (state, data_state, config) at `step` (default: latest) into the structure,
        dtypes and shardings of `target_state` (concrete arrays or ShapeDtypeStructs; pass
        ShapeDtypeStructs with other shardings to restore onto another mesh)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        params_target = _with_shapes(target_state["params"])
        rest_like = {k: v for k, v in target_state.items() if k != "params"}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params_target),
                train_state=ocp.args.StandardRestore(_with_shapes(rest_like)),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        rest = _data_to_keys(restored["train_state"], rest_like)
        state = {"params": restored["params"], **rest}
        return state, restored["data"], restored["config"]

    def restore_intact(self, target_state: dict) -> tuple[int, dict, dict, dict] | None:
        """(step, state, data_state, config) of the newest step that restores completely, or None when
        there is no checkpoint. A damaged step (truncated or zeroed file, missing item) is reported
        with its reason, moved to WORKDIR/checkpoints_damaged/, and the previous step is tried; when
        every step is damaged, CheckpointError lists them all."""
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                with _quiet_failed_reads():
                    state, data_state, config = self.restore(target_state, step)
                if not isinstance(data_state, dict) or not isinstance(config, dict):
                    raise ValueError("the data or config item is not a JSON object")
            except Exception as err:  # Orbax / TensorStore raise many types for damaged files
                reason = damage_reason(err)
                damaged.append(f"step {step}: {reason}")
                _DROP_ASYNCIO_NOISE.paths.add(os.path.join(self.directory, str(step)))
                _drop_closed_loop_errors()
                moved = self._set_aside(step)
                _warn("checkpoint step %d in %s is damaged (%s); moved to %s, trying the previous step",
                            step, self.directory, reason, moved)
                continue
            if damaged:
                _warn("resuming from step %d, the newest intact checkpoint (damaged: %s)", step, "; ".join(damaged))
            return step, state, data_state, config
        if damaged:
            raise CheckpointError(f"{self.directory}: no intact checkpoint to resume from ({'; '.join(damaged)}); "
                                  f"the damaged steps are in {os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)}. "
                                  f"Remove the workdir's checkpoints/ to start over")
        return None

    def _set_aside(self, step: int) -> str:
        """Moves a damaged step out of checkpoints/ (and reopens the manager, whose step list changed)."""
        self.manager.close()
        target_root = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
        os.makedirs(target_root, exist_ok=True)
        target = os.path.join(target_root, str(step))
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(os.path.join(self.directory, str(step)), target)
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=_handlers(), options=self._options)
        return target

    def wait(self) -> None:
        """Block until every pending asynchronous save is written and finalized."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class _AsyncioNoiseFilter(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" records about reads of a damaged step
    (already reported in one warning)."""

    def __init__(self):
        super().__init__()
        self.paths: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("never retrieved" in message and any(p in message for p in self.paths))


_DROP_ASYNCIO_NOISE = _AsyncioNoiseFilter()
logging.getLogger("asyncio").addFilter(_DROP_ASYNCIO_NOISE)
_NOISE_MARKERS = ("Event loop is closed", "call_soon_threadsafe", "_check_closed", "Traceback (most recent call last)")


def _is_closed_loop_error(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _drop_closed_loop_errors() -> None:
    """Once a damaged step was met: the late TensorStore callbacks of its failed reads may still report
    "Event loop is closed" after the capture below ended (through sys.excepthook, sys.unraisablehook or
    threading.excepthook); those reports, and only those, are dropped from then on."""
    if getattr(sys.excepthook, "_boom_drops_closed_loop", False):
        return

    def excepthook(kind, exc, tb, _previous=sys.excepthook):
        if not _is_closed_loop_error(exc):
            _previous(kind, exc, tb)

    def unraisablehook(info, _previous=sys.unraisablehook):
        if not _is_closed_loop_error(info.exc_value):
            _previous(info)

    def thread_excepthook(args, _previous=threading.excepthook):
        if not _is_closed_loop_error(args.exc_value):
            _previous(args)

    for hook in (excepthook, unraisablehook, thread_excepthook):
        hook._boom_drops_closed_loop = True
    sys.excepthook, sys.unraisablehook, threading.excepthook = excepthook, unraisablehook, thread_excepthook


@contextlib.contextmanager
def _quiet_failed_reads():
    """Captures what is written to file descriptor 2 during a restore. When the restore fails on a
    damaged file, TensorStore's other in-flight reads finish after Orbax's event loop has closed and
    each prints an "Event loop is closed" traceback from C: those lines are dropped (after a short
    drain), everything else is written back to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            time.sleep(1.0)  # let the in-flight reads report into the capture
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            if failed:
                text = "".join(line for line in text.splitlines(keepends=True)
                               if not any(m in line for m in _NOISE_MARKERS))
            if text:
                sys.stderr.write(text)


def damage_reason(err: BaseException) -> str:
    """A short, one-line reason from a failed restore (the first line of the innermost message)."""
    while err.__cause__ is not None and not str(err).strip():
        err = err.__cause__
    text = " ".join((str(err).strip().splitlines() or [""])[0].split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def latest_step(workdir: str) -> int | None:
    """The newest complete checkpoint step of a workdir, or None."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    manager = _read_only_manager(checkpoint_dir(workdir))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def saved_config(workdir: str) -> tuple[int, dict] | None:
    """(latest step, its config item) without reading any array; None when there is no readable one
    (no checkpoint, or a damaged config item: the restore then falls back and checks again)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return None
    try:
        manager = _read_only_manager(checkpoint_dir(workdir))
    except Exception:  # an unreadable checkpoints/ folder: the restore reports it
        return None
    try:
        step = manager.latest_step()
        if step is None:
            return None
        config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        return (step, config) if isinstance(config, dict) else None
    except Exception:  # damaged: restore_intact will say which step and why
        return None
    finally:
        manager.close()


def latest_params(workdir: str, target: Any = None, step: int | None = None) -> Any:
    """Params only, from the newest (or given) checkpoint of `workdir`.

    `target` (arrays or ShapeDtypeStructs, e.g. with another mesh's shardings) fixes dtypes and
    placement; without it every leaf is restored onto the first local device.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir}: no {CHECKPOINT_DIR}/ folder (not a training workdir?)")
    manager = _read_only_manager(directory)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no complete checkpoint")
        if target is None:
            meta = manager.item_metadata(step)["params"]
            device = jax.local_devices()[0]
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
                meta, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
        else:
            target = _with_shapes(target)
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        return restored["params"]
    finally:
        manager.close()

"""What a resumed run may change in its config, and making the allowed changes take real effect.

A checkpoint continues one run: its schedule, model, data and batches are fixed. Resuming with a
config that differs in those keys is refused, listing every difference. Keys that only say how long
to run (train.max_steps, train.epochs), how often to log, evaluate or save, what to export and where
the token cache lives may change; a new length rebuilds the learning-rate schedule (the warmup stays
the steps the run already had, the decay now ends at the new last step), and the log says so.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp

from boom_jax.errors import ConfigError
from boom_jax.training.config_validation import SCHEMA, upgrade_config_dict
from boom_jax.training.optim import ScheduleState

# Keys (or whole sections, ending in ".") a resumed run may change.
CHANGEABLE_ON_RESUME = (
    "name", "train.max_steps", "train.epochs", "train.log_every", "train.max_consecutive_skips",
    "eval.", "log.", "checkpoint.", "export.", "data.token_cache_dir",
    "mesh.", "model.remat", "model.remat_policy", "model.scan_layers", "model.attention_impl",  # placement, memory
    # and kernel choice only: restoring onto another mesh is supported
    "bag.", "incremental.", "cluster.", "experiment.", "merge.",  # workflow sections: used after training
)
LENGTH_KEYS = ("train.max_steps", "train.epochs")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; free-form dicts (model.sizes, data.datasets) flatten too."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, new value) for every key that differs ("<absent>" when missing)."""
    a, b = flatten(saved), flatten(new)
    missing = "<absent>"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if json.dumps(a.get(k, missing), sort_keys=True) != json.dumps(b.get(k, missing), sort_keys=True)]


def changeable(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in CHANGEABLE_ON_RESUME)


FREE_FORM = tuple(f"{k}." for k, t in SCHEMA.items() if t == "dict")  # model.sizes., data.datasets.


def project_change(key: str, old: Any, new: Any) -> bool:
    """A difference that comes from the project, not the run: a schema key added since the checkpoint
    was written, or one the project no longer has (the run's own free-form entries do not count)."""
    if old == "<absent>":
        return key in SCHEMA
    return new == "<absent>" and key not in SCHEMA and not key.startswith(FREE_FORM)


def check_resume_config(saved: dict, new: dict, workdir: str, step: int) -> list[tuple[str, Any, Any]]:
    """The run's allowed differences (keys the project added or dropped left out); ConfigError listing the
    others when any key that fixes the run changed. A key an earlier release saved under another name
    (config_validation.RENAMED_KEYS) is compared under today's name."""
    diffs = config_differences(upgrade_config_dict(saved), new)
    frozen = [d for d in diffs if not changeable(d[0]) and not project_change(*d)]
    if frozen:
        listed = "; ".join(f"config.{k}: {old!r} in the checkpoint, {now!r} now" for k, old, now in frozen[:10])
        more = f"; ... and {len(frozen) - 10} more" if len(frozen) > 10 else ""
        raise ConfigError(
            f"{workdir}: cannot resume from step {step} with a changed config ({listed}{more}). These keys fix "
            f"the run's schedule, model, data or batches: set them back, or start a new --workdir. A resume may "
            f"change only {', '.join(p + ('*' if p.endswith('.') else '') for p in CHANGEABLE_ON_RESUME)}")
    return [d for d in diffs if not project_change(*d)]


def _is_schedule_state(x: Any) -> bool:
    return isinstance(x, ScheduleState)


def schedule_numbers(opt_state: Any) -> tuple[int, int] | None:
    """(warmup, total) steps of the first learning-rate schedule state in `opt_state`, or None."""
    for leaf in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state):
        if _is_schedule_state(leaf):
            return int(leaf.warmup), int(leaf.total)
    return None


def rebuild_schedule(opt_state: Any, total_steps: int) -> Any:
    """`opt_state` whose schedule(s) decay to `total_steps` (warmup, peak and count kept; same placement)."""
    def one(x):
        if not _is_schedule_state(x):
            return x
        sharding = getattr(x.total, "sharding", None)
        total = jnp.asarray(total_steps, x.total.dtype)
        return x._replace(total=jax.device_put(total, sharding) if sharding is not None else total)

    return jax.tree.map(one, opt_state, is_leaf=_is_schedule_state)

"""Checks a training config once, at start, so that a bad key or value fails before any work.

Every error names the offending key as `config.section.key` and says what was expected. Checked:
unknown keys, wrong types, values out of range, unknown names (pooling, dtype, schedule, lr
schedule), and combinations that cannot work (mesh vs device count, batch vs data axes, gradient
cache chunk vs batch, LoRA on an encoder-only model).
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Iterable

import ml_collections

from boom_jax.data.schedules import SCHEDULES, check_schedule_options
from boom_jax.data.sources import DATA_SOURCES, parse_dataset_specs
from boom_jax.data.validation import ON_ERROR_MODES
from boom_jax.errors import ConfigError  # the project's one ConfigError (re-exported here)
from boom_jax.models.config import ATTENTION_IMPLS, COMPUTE_DTYPES, POOLING_MODES, REMAT_POLICY_NAMES
from boom_jax.models.lora import LORA_TARGET_MODULES
from boom_jax.models.registry import arch_names
from boom_jax.training.loss import loss_spec_from_config, loss_weight_keys
from boom_jax.training.optim import DECAY_SCHEDULES
from boom_jax.training.step import DROPOUT_RNG_IMPLS
from configs.common import base_config


_STR, _INT, _FLOAT, _BOOL, _DICT = str, int, (int, float), bool, "dict"


def _schema_of(defaults: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """section.key -> expected type, read off the defaults: a default's type is the key's type (a float
    key also takes an int); an empty ConfigDict default is a free-form sub-dict (`_DICT`) checked on its own."""
    schema: dict[str, Any] = {}
    for key, value in defaults.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            schema.update(_schema_of(value, f"{path}.") if len(value) else {path: _DICT})
        elif isinstance(value, bool):
            schema[path] = _BOOL
        elif isinstance(value, int):
            schema[path] = _INT
        elif isinstance(value, float):
            schema[path] = _FLOAT
        elif isinstance(value, str):
            schema[path] = _STR
        else:
            raise TypeError(f"configs/common.py: config.{path} has a default of type {type(value).__name__}; "
                            f"expected str, int, float, bool or a ConfigDict")
    return schema


# section.key -> expected type, derived from the defaults in configs/common.py (the one place a key,
# its default and its type are written). The merge section is checked in full (method, weights,
# parameter ranges, base) by boom_jax/boom/merge_config.py.
SCHEMA: dict[str, Any] = _schema_of(base_config())

# Top-level sections that other parts of the project add and validate themselves (e.g. a BOOM bag).
EXTENSION_SECTIONS = ("bag", "incremental", "cluster", "experiment")

# Allowed values, each imported from the code that interprets it.
CHOICES = {
    "model.pooling": ("",) + POOLING_MODES,  # "" keeps the model's own
    "model.dtype": COMPUTE_DTYPES,
    "model.remat_policy": REMAT_POLICY_NAMES,
    "model.attention_impl": ATTENTION_IMPLS,
    "data.source": DATA_SOURCES,
    "data.on_error": ON_ERROR_MODES,
    "train.lr_schedule": DECAY_SCHEDULES,
    "train.dropout_rng": DROPOUT_RNG_IMPLS,
}
DEFAULT_SCHEDULES = tuple(SCHEDULES)
ENCODER_ONLY_ARCHS = arch_names(encoder_only=True)  # derived from the architecture specs
LORA_TARGETS = tuple(LORA_TARGET_MODULES)


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"batch_size": 8}}` -> `{"train.batch_size": 8}`; free-form sub-dicts stay whole."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)) and SCHEMA.get(path) != _DICT:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _type_ok(value: Any, expected: Any) -> bool:
    if expected == _DICT:
        return isinstance(value, (ml_collections.ConfigDict, dict))
    if isinstance(value, bool) and expected is not _BOOL:
        return False
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return {_STR: "str", _INT: "int", _FLOAT: "float", _BOOL: "bool", _DICT: "dict"}.get(expected, str(expected))


def check_keys_and_types(config: ml_collections.ConfigDict) -> None:
    """Unknown keys, missing keys and wrong types, each naming `config.<key>`."""
    sections = {p.split(".")[0] for p in SCHEMA if "." in p}
    flat = _flatten(config)
    for path, value in flat.items():
        top = path.split(".")[0]
        if top in EXTENSION_SECTIONS:
            continue
        if path not in SCHEMA:
            if top in sections and "." not in path:
                _fail(f"config.{path} must be a section (a dict), got {type(value).__name__}")
            _fail(_unknown_key(path))
        expected = SCHEMA[path]
        if not _type_ok(value, expected):
            _fail(f"config.{path}={value!r} has type {type(value).__name__}; expected {_type_name(expected)}")
    for path in SCHEMA:
        if path not in flat:
            _fail(f"config.{path} is missing (start from configs/common.py:base_config())")


def _unknown_key(path: str) -> str:
    if path in RENAMED_KEYS:
        return f"config.{path} is not a known key; it is now config.{RENAMED_KEYS[path]}"
    return f"config.{path} is not a known key" + _close_matches(path, SCHEMA)


def _close_matches(path: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(path, list(known), n=3)
    return f"; did you mean {', '.join('config.' + c for c in close)}?" if close else ""


def check_values(config: ml_collections.ConfigDict, schedules: Iterable[str] = DEFAULT_SCHEDULES) -> None:
    """Ranges and names of single values."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in choices:
            _fail(f"config.{key}={value!r} is not one of {choices}")
    schedules = tuple(schedules)
    if config.data.schedule not in schedules:
        _fail(f"config.data.schedule={config.data.schedule!r} is not a known schedule; expected one of {schedules}")
    check_schedule_options(config.data.schedule, config.data.schedule_options)
    if not config.model.path:
        _fail("config.model.path is empty: set it to a local model folder (--config.model.path=/path/to/model)")
    positive = ["train.batch_size", "train.epochs", "train.log_every", "data.train_group_size",
                "data.query_max_len", "data.passage_max_len", "checkpoint.every_steps", "checkpoint.keep",
                "eval.batch_size", "train.max_consecutive_skips"]
    for key in positive:
        section, name = key.split(".")
        if config[section][name] < 1:
            _fail(f"config.{key}={config[section][name]} must be >= 1")
    non_negative = ["train.grad_cache_chunk", "train.max_steps", "data.limit", "model.lora_rank",
                    "data.pack_length", "data.pack_segments",
                    "eval.every_steps", "eval.max_queries", "eval.max_documents", "eval.max_texts",
                    "eval.max_seq_length", "train.weight_decay", "train.max_grad_norm"]
    for key in non_negative:
        section, name = key.split(".")
        if config[section][name] < 0:
            _fail(f"config.{key}={config[section][name]} must be >= 0")
    longest = max(config.data.query_max_len, config.data.passage_max_len)
    if config.data.packing and config.data.pack_length and config.data.pack_length < longest:
        _fail(f"config.data.pack_length={config.data.pack_length} is below the longest text "
              f"(data.query_max_len / data.passage_max_len = {longest}): a text must fit in one row; 0 = each "
              f"side's max length")
    if config.data.packing and config.data.pack_row_buckets < 1:
        _fail(f"config.data.pack_row_buckets={config.data.pack_row_buckets} must be >= 1")
    for key in ("train.learning_rate", "train.temperature"):
        section, name = key.split(".")
        value = config[section][name]
        if not (value > 0 and math.isfinite(value)):
            _fail(f"config.{key}={value} must be a finite number > 0")
    if not 0 <= config.train.warmup_ratio < 1:
        _fail(f"config.train.warmup_ratio={config.train.warmup_ratio} must be in [0, 1)")
    for key in ("model.dropout", "model.lora_dropout"):
        section, name = key.split(".")
        if not 0 <= config[section][name] < 1:
            _fail(f"config.{key}={config[section][name]} must be in [0, 1)")
    check_ratio("data.subset_ratio", config.data.subset_ratio)
    check_loss(config)
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        if size == 0 or size < -1:
            _fail(f"config.mesh.{axis}={size} must be a positive size or -1 (all remaining devices)")
    if sum(config.mesh[a] == -1 for a in ("data", "fsdp", "tensor")) > 1:
        _fail("config.mesh: only one of data, fsdp, tensor may be -1")
    targets = [t.strip() for t in config.model.lora_targets.split(",") if t.strip()]
    for t in targets:
        if t not in LORA_TARGETS:
            _fail(f"config.model.lora_targets: unknown target {t!r}; expected some of {LORA_TARGETS}")
    if config.model.lora_rank > 0 and not targets:
        _fail("config.model.lora_targets is empty but config.model.lora_rank > 0")
    if config.model.query_prompt_template and "{instruction}" not in config.model.query_prompt_template:
        _fail("config.model.query_prompt_template must contain '{instruction}' (or be empty)")
    if config.data.source == "files":
        if not config.data.datasets:
            _fail("config.data.datasets is empty but config.data.source='files'")
        try:
            parse_dataset_specs({name: dict(spec) for name, spec in config.data.datasets.items()})
        except ValueError as e:
            raise ConfigError(f"config.data.{e}") from None
    if "bag" in config and "ratios" in config.bag:
        for i, r in enumerate(config.bag.ratios):
            check_ratio(f"bag.ratios[{i}]", r)


def check_loss(config: ml_collections.ConfigDict) -> None:
    """The loss section: non-negative finite weights, parseable Matryoshka lists (errors name config.loss.*)."""
    loss = config.loss
    for key in (*loss_weight_keys(), "fake_negative_margin"):
        if not (math.isfinite(loss[key]) and loss[key] >= 0):
            _fail(f"config.loss.{key}={loss[key]} must be a finite number >= 0")
    if not (math.isfinite(loss.teacher_temperature) and loss.teacher_temperature > 0):
        _fail(f"config.loss.teacher_temperature={loss.teacher_temperature} must be a finite number > 0")
    try:
        spec = loss_spec_from_config(loss, config.train.temperature)
    except ValueError as e:
        message = str(e)
        raise ConfigError(message if message.startswith("config.") else f"config.{message}") from None
    dims = spec.matryoshka_dims
    if dims and (len(set(dims)) != len(dims)):
        _fail(f"config.loss.matryoshka_dims={loss.matryoshka_dims!r} repeats a width")


def check_ratio(key: str, value: Any) -> None:
    """A sampling ratio must lie in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        _fail(f"config.{key}={value!r} must be in (0, 1]")


def mesh_shape(config: ml_collections.ConfigDict, device_count: int) -> dict[str, int]:
    """The mesh axis sizes with -1 resolved against `device_count`; errors name config.mesh."""
    sizes = {a: config.mesh[a] for a in ("data", "fsdp", "tensor")}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    spec = ", ".join(f"{a}={s}" for a, s in sizes.items())
    if any(s == -1 for s in sizes.values()):
        if device_count % fixed:
            _fail(f"config.mesh ({spec}): the fixed axes (product {fixed}) do not divide the {device_count} devices")
        sizes = {a: (device_count // fixed if s == -1 else s) for a, s in sizes.items()}
    elif fixed != device_count:
        _fail(f"config.mesh ({spec}) has {fixed} devices but {device_count} are available; "
              f"set one axis to -1 or make the product {device_count}")
    return sizes


def check_combinations(config: ml_collections.ConfigDict, device_count: int, arch: str | None = None) -> None:
    """Settings that are fine alone but cannot work together."""
    sizes = mesh_shape(config, device_count)
    batch = config.train.batch_size
    data_shards = sizes["data"] * sizes["fsdp"]
    if batch % data_shards:
        _fail(f"config.train.batch_size={batch} must be divisible by the data-parallel shards "
              f"(config.mesh.data x config.mesh.fsdp = {sizes['data']} x {sizes['fsdp']} = {data_shards})")
    chunk = config.train.grad_cache_chunk
    if chunk:
        if chunk > batch or batch % chunk:
            _fail(f"config.train.grad_cache_chunk={chunk} must divide config.train.batch_size={batch}")
        if (batch // chunk) > 1 and chunk % data_shards:
            _fail(f"config.train.grad_cache_chunk={chunk} must be divisible by the data-parallel shards "
                  f"(config.mesh.data x config.mesh.fsdp = {data_shards}) so each chunk is spread over them")
    if arch is not None:
        if config.model.lora_rank > 0 and arch in ENCODER_ONLY_ARCHS:
            _fail(f"config.model.lora_rank={config.model.lora_rank}: LoRA is only supported for decoder models "
                  f"({', '.join(arch_names(encoder_only=False))}), but config.model.path is a {arch!r} model; "
                  f"set config.model.lora_rank=0")
        if config.model.pooling == "lasttoken" and arch in ENCODER_ONLY_ARCHS:
            _fail(f"config.model.pooling='lasttoken' does not suit a {arch!r} encoder; use 'mean' or 'cls'")


def validate_config(
    config: ml_collections.ConfigDict,
    device_count: int | None = None,
    arch: str | None = None,
    schedules: Iterable[str] | None = None,
) -> None:
    """Raise ConfigError naming the first bad key; checks needing devices/arch run when given."""
    check_keys_and_types(config)
    check_values(config, DEFAULT_SCHEDULES if schedules is None else schedules)
    if device_count is not None:
        check_combinations(config, device_count, arch)


# Keys of configs written by earlier releases -> today's key (same value), so their workdirs still resume.
RENAMED_KEYS = {"data.two_stage_first": "data.schedule_options.first_stage"}


def upgrade_config_dict(saved: dict) -> dict:
    """A copy of a saved config dict (a workdir's config.json / a checkpoint's config item) with
    RENAMED_KEYS moved to today's keys."""
    out = copy.deepcopy(saved)
    for old, new in RENAMED_KEYS.items():
        *parents, field = old.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and field in node:
            value = node.pop(field)
            *parents, field = new.split(".")
            target = out
            for part in parents:
                target = target.setdefault(part, {})
            target[field] = value
    return out


def check_override_keys(argv: Iterable[str], flag_name: str = "config") -> None:
    """Command-line overrides (`--config.train.batch_size=8`) must name known keys.

    absl reports an unknown override as a bare AttributeError; this names the key and close matches.
    """
    free_form = tuple(f"{p}." for p, t in SCHEMA.items() if t == _DICT)
    prefix = f"--{flag_name}."
    for arg in argv:
        if not arg.startswith(prefix):
            continue
        path = arg[len(prefix):].split("=", 1)[0]
        if path in SCHEMA or path.startswith(free_form) or path.split(".")[0] in EXTENSION_SECTIONS:
            continue
        _fail(_unknown_key(path))

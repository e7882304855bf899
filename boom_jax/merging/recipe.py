"""Merge recipes as YAML files, in mergekit's format: read one into merge settings, write one for a merge.

A recipe (mergekit's `MergeConfiguration`, the `models:` form):

    merge_method: ties
    base_model: ./base                    # paths relative to the recipe's folder, or absolute
    models:
      - model: ./member_a                 # a model folder, train workdir or HF / sentence-transformers folder
        parameters: {weight: 0.6, density: 0.5}
      - model: ./member_b
        parameters:
          weight: [{filter: self_attn, value: 0.8}, {value: 0.4}]   # per-tensor: first match wins
          density: 0.5
    parameters: {lambda: 0.9, normalize: true}
    dtype: float32

Per-model parameters: `weight`, `density`, `gamma`, `epsilon`; global ones: the method's parameters
(`lambda` is the project's `lambda_`). A setting is a number, a gradient (a list of numbers,
interpolated over the layers as mergekit does: layer i of L at i / (L - 1), other tensors at 0) or a
list of conditions `{filter: TEXT, value: V}` (mergekit: TEXT is a substring of the tensor's name,
matched against both the project's leaf path and the Hugging Face tensor name) or `{regex: RE, value: V}`
(the project's: RE fullmatches the leaf path); a condition without filter is the default.

mergekit's base model is the t = 0 end of `slerp` and the origin of the task-vector methods,
multislerp and nuslerp; a base listed among `models` is not merged as a member. The project adds three
top-level keys: `include` / `exclude` (leaf-path regexes, see methods.py) and `task_vector_base` (the
origin for slerp / linear / karcher on task vectors, a merge mergekit does not have).

Every merge the project runs writes its recipe as OUT/recipe.yml (`recipe_text`); running it
(`python -m boom_jax.merge --recipe=OUT/recipe.yml --out=OTHER`) reproduces the model bit for bit.
Errors name the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from boom_jax.merging import methods
from boom_jax.models.registry import get_arch

RECIPE_FILE = "recipe.yml"
MODEL_PARAMETERS = ("weight", "density", "gamma", "epsilon")
PER_MODEL_PARAMS = ("density", "gamma", "epsilon")
YAML_NAMES = {"lambda": "lambda_"}  # recipe name -> project parameter name
TOP_LEVEL = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "include", "exclude",
             "task_vector_base", "slices", "modules", "tokenizer_source", "tokenizer", "chat_template")
UNSUPPORTED = {
    "slices": "layer slices (passthrough / frankenmerges) are not supported; list whole models under `models:`",
    "modules": "modules are not supported; list whole models under `models:`",
    "tokenizer": "tokenizer merging is not supported; the merged model keeps the first model's tokenizer",
    "chat_template": "chat templates are not supported (embedding models)",
}
COMPUTE_DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYER_INDEX = re.compile(r"(?:^|/)layers?_(\d+)(?:/|$)")


class RecipeError(methods.MergeError):
    """A recipe that cannot run; the message names the file, the line and the key."""


@dataclasses.dataclass
class Recipe:
    """A parsed recipe: raw settings, paths resolved against the recipe's folder."""

    path: str
    method: str
    members: list[str]  # the models merged (the base excluded)
    base: str | None  # base_model (or task_vector_base), None if none
    member_parameters: list[dict[str, Any]]  # per member: weight / density / gamma / epsilon settings
    parameters: dict[str, Any]  # global parameters, project names
    include: Any = None
    exclude: Any = None
    lines: dict[str, int] = dataclasses.field(default_factory=dict)  # key path -> line (1-based)

    def where(self, key: str) -> str:
        line = self.lines.get(key) or self.lines.get(key.split(".")[0].split("[")[0])
        return f"{self.path}:{line}: {key}" if line else f"{self.path}: {key}"


# ----------------------------------------------------------------------------------------------
# Reading


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Key path ("models[1].parameters.weight") -> 1-based line, from a composed YAML node."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = item.start_mark.line + 1
            out.update(_key_lines(item, path))
    return out


def _resolve_model(ref: Any, folder: str, where: str) -> str:
    if not isinstance(ref, str) or not ref:
        raise RecipeError(f"{where}: expected a model path, got {ref!r}")
    if "+" in ref and not os.path.exists(ref):
        raise RecipeError(f"{where}: {ref!r}: LoRA references (model+lora) are not supported; merge the adapter first")
    path = ref if os.path.isabs(ref) else os.path.normpath(os.path.join(folder, ref))
    if not os.path.exists(path):
        raise RecipeError(f"{where}: {ref!r} is not a local folder (looked for {path}); models are never "
                          "downloaded: give a model folder, train workdir or HF / sentence-transformers folder")
    return path


def read_recipe(path: str | os.PathLike) -> Recipe:
    """Parses a recipe file; errors (RecipeError) name the file, line and key."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        raise RecipeError(f"{path}:{line} not valid YAML: {getattr(e, 'problem', e)}") from None
    recipe = Recipe(path, "", [], None, [], {}, lines=_key_lines(node) if node is not None else {})
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: a recipe is a mapping with merge_method and models, got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            raise RecipeError(f"{recipe.where(str(key))}: unknown key; expected some of {', '.join(TOP_LEVEL)}")
        if key in UNSUPPORTED:
            raise RecipeError(f"{recipe.where(key)}: {UNSUPPORTED[key]}")
    method = data.get("merge_method")
    if method not in methods.MERGE_METHODS:
        raise RecipeError(f"{recipe.where('merge_method')}: {method!r} is not a known method; "
                          f"known: {', '.join(methods.MERGE_METHODS)}")
    recipe.method = method
    m = methods.MERGE_METHODS[method]
    if data.get("tokenizer_source") not in (None, "base"):
        raise RecipeError(f"{recipe.where('tokenizer_source')}: only 'base' (or none) is supported; "
                          "the merged model keeps the first model's tokenizer")
    for key in ("dtype", "out_dtype"):
        if data.get(key) is not None and data[key] not in COMPUTE_DTYPES:
            raise RecipeError(f"{recipe.where(key)}: {data[key]!r} is not one of {COMPUTE_DTYPES}")
    if data.get("out_dtype") is not None:
        raise RecipeError(f"{recipe.where('out_dtype')}: not supported; merged parameters keep the inputs' dtypes "
                          "(merges compute in float64 whatever `dtype` says)")
    folder = os.path.dirname(os.path.abspath(path))
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise RecipeError(f"{recipe.where('models')}: expected a list of `- model: PATH` entries")
    base = None
    if data.get("base_model") is not None:
        base = _resolve_model(data["base_model"], folder, recipe.where("base_model"))
    if data.get("task_vector_base") is not None:
        if base is not None and method != "slerp":
            raise RecipeError(f"{recipe.where('task_vector_base')}: give either base_model or task_vector_base")
        recipe.base = _resolve_model(data["task_vector_base"], folder, recipe.where("task_vector_base"))
    entries = []
    for i, entry in enumerate(models):
        key = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise RecipeError(f"{recipe.where(key)}: expected `model: PATH` (and optional `parameters:`)")
        extra = sorted(set(entry) - {"model", "parameters"})
        if extra:
            raise RecipeError(f"{recipe.where(f'{key}.{extra[0]}')}: unknown key; expected model, parameters")
        params = entry.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{recipe.where(f'{key}.parameters')}: expected a mapping")
        for name in params:
            if name not in MODEL_PARAMETERS:
                raise RecipeError(f"{recipe.where(f'{key}.parameters.{name}')}: unknown per-model parameter; "
                                  f"expected some of {', '.join(MODEL_PARAMETERS)}")
            if name != "weight" and name not in m.params:
                raise RecipeError(f"{recipe.where(f'{key}.parameters.{name}')}: {method} takes no {name}")
        entries.append((_resolve_model(entry["model"], folder, recipe.where(f"{key}.model")), dict(params), key))
    if method == "slerp":  # base_model is the t = 0 end, one of the two models
        paths = [p for p, _, _ in entries]
        if base is None or base not in paths or len(entries) != 2:
            raise RecipeError(f"{recipe.where('base_model')}: slerp needs `base_model` (the t = 0 end) and two "
                              "`models`, one of them the base_model")
        entries.sort(key=lambda e: e[0] != base)
    elif base is not None:
        if method in ("linear", "karcher"):
            raise RecipeError(f"{recipe.where('base_model')}: {method} takes no base_model in mergekit (use "
                              "task_vector_base to merge task vectors)")
        recipe.base = base
        entries = [e for e in entries if e[0] != base]
    recipe.members = [p for p, _, _ in entries]
    recipe.member_parameters = [p for _, p, _ in entries]
    recipe.lines.update({f"member{i}": recipe.lines.get(k, 0) for i, (_, _, k) in enumerate(entries)})
    if "weight" in {k for p in recipe.member_parameters for k in p} and not m.takes_weights:
        raise RecipeError(f"{recipe.where('models')}: {method} takes no weight (it computes its own)")
    params = data.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise RecipeError(f"{recipe.where('parameters')}: expected a mapping")
    for name, value in params.items():
        project = YAML_NAMES.get(name, name)
        if project in PER_MODEL_PARAMS or name == "weight":
            if name == "weight" and not m.takes_weights:
                raise RecipeError(f"{recipe.where(f'parameters.{name}')}: {method} takes no weight")
            for p in recipe.member_parameters:  # a global default for every model (mergekit does the same)
                p.setdefault(name, value)
            continue
        if project not in m.params:
            raise RecipeError(f"{recipe.where(f'parameters.{name}')}: {method} has no parameter {name!r}; "
                              f"accepted: {', '.join(sorted(set(m.params) - set(PER_MODEL_PARAMS))) or 'none'}")
        recipe.parameters[project] = value
    recipe.include, recipe.exclude = data.get("include"), data.get("exclude")
    if m.needs_base and recipe.base is None:
        raise RecipeError(f"{recipe.where('merge_method')}: {method} works on task vectors and needs base_model")
    return recipe


# ----------------------------------------------------------------------------------------------
# Settings per leaf


def _layer_t(path: str, num_layers: int) -> float:
    match = LAYER_INDEX.search(path)
    if match is None or num_layers <= 1:
        return 0.0
    return int(match.group(1)) / (num_layers - 1)


def _is_plain(setting: Any) -> bool:
    return setting is None or isinstance(setting, (bool, int, float, str))


def evaluate(setting: Any, path: str, hf_name: str | None, t: float, where: str) -> Any:
    """The value of one recipe setting for the leaf `path` (mergekit's evaluate_setting, plus regex)."""
    if _is_plain(setting):
        return setting
    if isinstance(setting, list) and setting and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if isinstance(setting, list) and all(isinstance(e, Mapping) for e in setting):
        for cond in setting:
            extra = sorted(set(cond) - {"filter", "regex", "value"})
            if extra or "value" not in cond:
                raise RecipeError(f"{where}: a condition is {{filter: TEXT, value: V}} or {{regex: RE, value: V}}, got {dict(cond)}")
            if "regex" in cond:
                hit = re.fullmatch(str(cond["regex"]), path) is not None
            else:
                f = cond.get("filter")
                hit = f is None or f == "*" or str(f) in path or (hf_name is not None and str(f) in hf_name)
            if hit:
                return evaluate(cond["value"], path, hf_name, t, where)
        return None
    raise RecipeError(f"{where}: expected a number, a list of numbers (gradient) or a list of "
                      f"{{filter, value}} conditions, got {setting!r}")


def hf_names(cfg: Any) -> dict[str, str]:
    """Leaf path -> Hugging Face tensor name for the architectures with a weight map ({} otherwise)."""
    try:
        entries = get_arch(cfg.arch)._weights().name_map(cfg)
    except (AttributeError, ValueError, KeyError, ImportError):
        return {}
    return {"/".join(path): hf for hf, path, _ in entries}


def _per_leaf(values: dict[str, Any]) -> Any:
    """A per-leaf setting as the plainest form methods.py takes: one value if all agree, else a dict."""
    distinct = {repr(v) for v in values.values()}
    if len(distinct) == 1:
        return next(iter(values.values()))
    return {re.escape(path): v for path, v in values.items()}


def merge_settings(recipe: Recipe, leaf_paths: Sequence[str], cfg: Any = None) -> tuple[Any, dict[str, Any]]:
    """(weights, params) for methods.py from a recipe, every setting evaluated for every leaf."""
    num_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    names = hf_names(cfg) if cfg is not None else {}
    k = len(recipe.members)

    def each_leaf(get: Any) -> dict[str, Any]:
        return {p: get(p, names.get(p), _layer_t(p, num_layers)) for p in leaf_paths}

    weights = None
    keys = sorted({key for p in recipe.member_parameters for key in p})
    params: dict[str, Any] = {}
    for key in keys:
        def member_values(path, hf, t, key=key):
            out = []
            for i, mp in enumerate(recipe.member_parameters):
                value = evaluate(mp.get(key), path, hf, t, f"{recipe.where(f'member{i}')} parameters.{key}")
                if value is None and key == "weight":
                    raise RecipeError(f"{recipe.where(f'member{i}')}: model {recipe.members[i]} has no weight for "
                                      f"{path!r} (give every model a weight, or none)")
                out.append(value)
            return out

        values = each_leaf(member_values)
        if key == "weight":
            weights = _per_leaf(values)
        else:
            defaults = {"density": 1.0, "gamma": 0.01, "epsilon": 0.15}
            values = {p: [defaults[key] if v is None else v for v in vs] for p, vs in values.items()}
            params[key] = _per_leaf(values)
    for key, setting in recipe.parameters.items():
        where = recipe.where(f"parameters.{key}")
        if _is_plain(setting):
            params[key] = setting
        else:
            params[key] = _per_leaf(each_leaf(lambda path, hf, t, s=setting, w=where: evaluate(s, path, hf, t, w)))
    for key in ("max_iter", "seed"):
        if isinstance(params.get(key), float) and float(params[key]).is_integer():
            params[key] = int(params[key])
    try:
        methods.check_settings(recipe.method, k, weights, **params)
    except methods.MergeError as e:
        key = next((k for k in list(recipe.parameters) + list(keys) if str(e).startswith(f"{recipe.method}: {k}=")), None)
        yaml_key = {v: k for k, v in YAML_NAMES.items()}.get(key, key)
        where = recipe.where(f"parameters.{yaml_key}") if key in recipe.parameters else recipe.path
        raise RecipeError(f"{where}: {e}") from None
    return weights, params


# ----------------------------------------------------------------------------------------------
# Writing


def _plain(value: Any) -> Any:
    """numpy scalars / arrays / tuples as YAML-friendly Python values (floats keep every bit)."""
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_plain(v) for v in np.asarray(value).tolist()] if isinstance(value, np.ndarray) else [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _conditions(pattern: Mapping[str, Any], pick: Any) -> list[dict[str, Any]]:
    """A methods.py per-pattern dict as recipe conditions ({regex, value} ..., {value} last)."""
    out = [{"regex": p, "value": _plain(pick(v))} for p, v in pattern.items() if p != "default"]
    if "default" in pattern:
        out.append({"value": _plain(pick(pattern["default"]))})
    return out


def _member_setting(value: Any, i: int) -> Any:
    """Member i's share of a per-model setting: a scalar, a K-list, or a per-pattern dict of either."""
    def pick(v):
        return v[i] if isinstance(v, (list, tuple, np.ndarray)) else v

    if isinstance(value, Mapping):
        return _conditions(value, pick)
    return _plain(pick(value))


def recipe_text(method: str, inputs: Sequence[str], weights: Any = None, base: str | None = None,
                include: Any = None, exclude: Any = None, params: Mapping[str, Any] | None = None) -> str:
    """The recipe of a merge, in mergekit's format (plus the project's keys where needed)."""
    methods.get_method(method)
    params = dict(params or {})
    members = [os.path.abspath(p) for p in inputs]
    data: dict[str, Any] = {"merge_method": method}
    if base is not None:
        base = os.path.abspath(base)
        data["task_vector_base" if method in ("slerp", "linear", "karcher") else "base_model"] = base
    if method == "slerp":
        data["base_model"] = members[0]
    entries = []
    for i, path in enumerate(members):
        mp: dict[str, Any] = {}
        if weights is not None:
            mp["weight"] = _member_setting(weights, i)
        for key in PER_MODEL_PARAMS:
            if key in params:
                mp[key] = _member_setting(params[key], i)
        entries.append({"model": path, "parameters": mp} if mp else {"model": path})
    data["models"] = entries
    glob = {}
    for key, value in params.items():
        if key in PER_MODEL_PARAMS:
            continue
        name = {v: k for k, v in YAML_NAMES.items()}.get(key, key)
        glob[name] = _conditions(value, lambda v: v) if isinstance(value, Mapping) else _plain(value)
    if glob:
        data["parameters"] = glob
    if include is not None:
        data["include"] = _plain(include)
    if exclude is not None:
        data["exclude"] = _plain(exclude)
    header = ("# Merge recipe (mergekit's format). Reproduce this model with:\n"
              "#   python -m boom_jax.merge --recipe=recipe.yml --out=DIR\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


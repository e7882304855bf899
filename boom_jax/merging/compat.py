"""Compatibility checks run before any merge: same leaves, shapes, dtypes and model config.

Inputs are param trees or specs ({leaf path: (shape, dtype)}, e.g. from model_io.read_param_specs,
so a streaming merge checks without reading any tensor). Every mismatch is collected and raised at
once in an IncompatibleModelsError; nothing is written before the check passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from boom_jax.merging.methods import flatten_with_paths

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]

# ModelConfig fields that only matter while training (they never change the weights' meaning).
TRAINING_ONLY_FIELDS = frozenset(
    {"dtype", "remat", "remat_policy", "scan_layers", "attention_impl", "dropout", "attention_dropout",
     "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"}
)
# Fields of the embedding head: they must agree between the merged models, not with a base.
HEAD_FIELDS = frozenset({"pooling", "normalize", "max_seq_length", "padding_side", "append_eos", "prompts", "similarity"})
# The original config.json is not compared: the architecture and its sizes are ModelConfig fields of
# their own, and config.json differs in bookkeeping between an HF folder and its round trips.
IGNORED_FIELDS = frozenset({"hf_config"})
MAX_LISTED = 10


class IncompatibleModelsError(ValueError):
    """Models that cannot be merged; `mismatches` lists every difference found."""

    def __init__(self, mismatches: Sequence[str]):
        self.mismatches = list(mismatches)
        shown = self.mismatches[:MAX_LISTED]
        more = len(self.mismatches) - len(shown)
        lines = ["models cannot be merged:"] + [f"  - {m}" for m in shown]
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


def spec_of(tree_or_spec: Any) -> Spec:
    """{leaf path: (shape, dtype)} of a param tree; a spec is returned as is."""
    if isinstance(tree_or_spec, Mapping) and tree_or_spec and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], np.dtype) for v in tree_or_spec.values()
    ):
        return dict(tree_or_spec)
    leaves, _ = flatten_with_paths(tree_or_spec)
    return {p: (tuple(np.shape(x)), np.dtype(x.dtype)) for p, x in leaves}


def config_view(cfg: Any, with_head: bool = True) -> dict[str, Any]:
    """The config fields a merge must agree on (a ModelConfig or its to_dict())."""
    data = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    skip = TRAINING_ONLY_FIELDS | IGNORED_FIELDS | (frozenset() if with_head else HEAD_FIELDS)
    out = {k: v for k, v in data.items() if k not in skip}
    if "prompts" in out:  # an empty prompt is no prompt (sentence-transformers writes {"query": ""})
        out["prompts"] = {k: v for k, v in (out["prompts"] or {}).items() if v}
    return out


def spec_mismatches(reference: Spec, other: Spec, ref_name: str, name: str) -> list[str]:
    """Differences in leaves, shapes and dtypes of `other` against `reference`."""
    out = []
    for path in reference:
        if path not in other:
            out.append(f"{name}: missing parameter {path!r} (present in {ref_name})")
    for path in other:
        if path not in reference:
            out.append(f"{name}: unexpected parameter {path!r} (absent from {ref_name})")
    for path, (shape, dtype) in reference.items():
        if path in other:
            oshape, odtype = other[path]
            if tuple(oshape) != tuple(shape):
                out.append(f"{name}: {path!r} has shape {tuple(oshape)}, {ref_name} has {tuple(shape)}")
            elif np.dtype(odtype) != np.dtype(dtype):
                out.append(f"{name}: {path!r} has dtype {np.dtype(odtype).name}, {ref_name} has {np.dtype(dtype).name}")
    return out


def config_mismatches(reference: Any, other: Any, ref_name: str, name: str, with_head: bool = True) -> list[str]:
    """Differences in architecture (and embedding head) config fields of `other` against `reference`."""
    a, b = config_view(reference, with_head), config_view(other, with_head)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{name}: config {key} = {b.get(key, '<unset>')!r}, {ref_name} has {a.get(key, '<unset>')!r}")
    return out


def check_compatible(
    trees_or_specs: Sequence[Any],
    configs: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
    base: Any = None,
    base_config: Any = None,
    base_name: str = "base",
) -> None:
    """Raises IncompatibleModelsError listing every mismatch between the models (and the base).

    The models must share leaves, shapes, dtypes and config (ignoring training-only fields); a base
    must share leaves, shapes and dtypes and the architecture fields (its embedding head may differ).
    """
    if not trees_or_specs:
        raise IncompatibleModelsError(["no models to merge"])
    names = list(names) if names is not None else [f"model {i}" for i in range(len(trees_or_specs))]
    specs = [spec_of(t) for t in trees_or_specs]
    mismatches: list[str] = []
    for spec, name in zip(specs[1:], names[1:]):
        mismatches += spec_mismatches(specs[0], spec, names[0], name)
    if configs is not None:
        for cfg, name in zip(list(configs)[1:], names[1:]):
            mismatches += config_mismatches(configs[0], cfg, names[0], name)
    if base is not None:
        mismatches += spec_mismatches(specs[0], spec_of(base), names[0], base_name)
    if base_config is not None and configs is not None:
        mismatches += config_mismatches(configs[0], base_config, names[0], base_name, with_head=False)
    if mismatches:
        raise IncompatibleModelsError(mismatches)

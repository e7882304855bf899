"""Reading and writing the sentence-transformers files of a model folder.

Read: modules.json (is there a Normalize module? where is the Pooling config?), the pooling config
(legacy `pooling_mode_*_tokens` booleans or the newer `pooling_mode` string),
sentence_bert_config.json (max_seq_length), config_sentence_transformers.json (prompts,
similarity). Written in the widely readable layout (sentence_transformers.models.* module names),
which sentence-transformers 2.x to 6.x all load.
"""

from __future__ import annotations

import json
import os
from typing import Any

from boom_jax.atomic_io import write_json
from boom_jax.hf.errors import HFFolderError
from boom_jax.models.config import SIMILARITY_FUNCTIONS, ModelConfig

_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


def read_json(path: str) -> Any:
    """Parsed JSON; the error names the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HFFolderError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _pooling_mode(pool_cfg: dict, source: str) -> str:
    if "pooling_mode" in pool_cfg:
        modes = [pool_cfg["pooling_mode"]]
    else:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if pool_cfg.get(key)]
    if len(modes) != 1:
        raise HFFolderError(f"{source}: expected exactly one pooling mode, found {modes or 'none'}")
    mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(modes[0], modes[0])
    if mode not in ("mean", "cls", "lasttoken"):
        raise HFFolderError(f"{source}: pooling mode {mode!r} is not supported (mean, cls, lasttoken)")
    if pool_cfg.get("include_prompt", True) is False:
        raise HFFolderError(f"{source}: include_prompt=false is not supported")
    return mode


# The module kinds a boom_jax model is made of (first the transformer, then pooling, then normalize).
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def check_modules(modules: list, modules_path: str) -> None:
    """Refuses a module boom_jax would silently drop (Dense, LayerNorm, WordEmbeddings, Router, ...),
    naming it: exporting without it would change the embeddings."""
    kinds = []
    for i, m in enumerate(modules):
        m = m if isinstance(m, dict) else {"name": repr(m)}
        type_ = str(m.get("type", ""))
        kind = type_.rsplit(".", 1)[-1]
        if kind not in SUPPORTED_MODULES:
            raise HFFolderError(
                f"{modules_path}: module {i} ({m.get('path') or m.get('name')}) is "
                f"{type_ or 'of no type'!r}, which boom_jax cannot load; supported: a Transformer, then Pooling and an "
                f"optional Normalize")
        kinds.append(kind)
    if kinds[:1] != ["Transformer"] or kinds[1:2] != ["Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise HFFolderError(f"{modules_path}: modules {kinds} are not Transformer, Pooling[, Normalize] in that order")


def read_st_settings(folder: str) -> dict[str, Any]:
    """ModelConfig fields from the sentence-transformers files present in `folder` (none: {})."""
    out: dict[str, Any] = {}
    modules_path = os.path.join(folder, "modules.json")
    if os.path.exists(modules_path):
        modules = read_json(modules_path)
        if not isinstance(modules, list):
            raise HFFolderError(f"{modules_path}: expected a JSON list of modules")
        check_modules(modules, modules_path)
        out["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        for m in modules:
            if str(m.get("type", "")).endswith("Pooling"):
                pool_path = os.path.join(folder, m.get("path", ""), "config.json")
                if not os.path.exists(pool_path):
                    raise HFFolderError(f"{modules_path}: pooling module config {pool_path} does not exist")
                out["pooling"] = _pooling_mode(read_json(pool_path), pool_path)
    sbert_path = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(sbert_path):
        sbert = read_json(sbert_path)
        if "max_seq_length" in sbert and sbert["max_seq_length"]:
            out["max_seq_length"] = int(sbert["max_seq_length"])
    st_path = os.path.join(folder, "config_sentence_transformers.json")
    if os.path.exists(st_path):
        st = read_json(st_path)
        prompts = st.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise HFFolderError(f"{st_path}: 'prompts' must map names to strings")
        out["prompts"] = dict(prompts)
        sim = st.get("similarity_fn_name")
        if sim not in (None, *SIMILARITY_FUNCTIONS):
            raise HFFolderError(f"{st_path}: similarity_fn_name={sim!r} is not supported {SIMILARITY_FUNCTIONS}")
        if sim is not None:
            out["similarity"] = sim
    return out


def write_st_files(folder: str, cfg: ModelConfig) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/ (if normalize) and
    config_sentence_transformers.json (prompts, `cfg.similarity`) for `cfg`."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if cfg.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    write_json(os.path.join(folder, "modules.json"), modules)
    write_json(os.path.join(folder, "sentence_bert_config.json"), {"max_seq_length": cfg.max_seq_length, "do_lower_case": False})
    write_json(
        os.path.join(folder, "1_Pooling", "config.json"),
        {
            "word_embedding_dimension": cfg.embedding_dim,
            "pooling_mode_cls_token": cfg.pooling == "cls",
            "pooling_mode_mean_tokens": cfg.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": cfg.pooling == "lasttoken",
            "include_prompt": True,
        },
    )
    prompts = {"query": "", "document": ""}
    prompts.update(cfg.prompts)
    write_json(
        os.path.join(folder, "config_sentence_transformers.json"),
        {
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": cfg.similarity,
        },
    )

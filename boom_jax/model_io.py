"""Model folders: the portable unit of a trained or merged model.

A model folder holds
  model_config.json  ModelConfig.to_dict()
  params/            an Orbax PyTree checkpoint, one array per leaf (readable leaf by leaf)
  tokenizer/         the tokenizer files copied from the source folder (absent when there is none)
  README.md          a short description (optional)

`save_model_folder` writes it atomically (temp folder, rename at the end). `load_model` reads a model
folder, a train workdir (its WORKDIR/model) or a Hugging Face / sentence-transformers folder.
`read_leaves` and `read_param_specs` serve the streaming merge: they restore some leaves, or only the
shapes and dtypes, without reading the whole model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from boom_jax.atomic_io import atomic_folder, publish_folder, temp_folder, write_json, write_text
from boom_jax.hf.loader import load_hf_model
from boom_jax.models.config import ModelConfig
from boom_jax.tree_paths import flatten_with_paths, set_path

Params = dict[str, Any]

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
README_FILE = "README.md"
# Files that make up a Hugging Face tokenizer (copied into tokenizer/).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
)


class ModelFolderError(ValueError):
    """A path that is not a readable model (names the path and what was expected there)."""


# ----------------------------------------------------------------------------------------------
# Finding what a path holds


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds model_config.json and params/."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, PARAMS_DIR))


def is_hf_folder(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a Hugging Face model folder (config.json + safetensors weights)."""
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, "model.safetensors"))
        or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    )


def _expected_message(path: str) -> str:
    try:
        present = sorted(os.listdir(path))[:12]
    except OSError:
        present = []
    return (
        f"{path}: not a model. Expected a model folder ({CONFIG_FILE} + {PARAMS_DIR}/), a train workdir "
        f"(model/{CONFIG_FILE}), or a Hugging Face / sentence-transformers folder (config.json + "
        f"model.safetensors); found: {present or 'nothing'}"
    )


def resolve_model_folder(path: str | os.PathLike) -> str | None:
    """The model folder `path` stands for (itself or WORKDIR/model), or None for an HF folder.

    Raises ModelFolderError for a missing path or a folder of another kind.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFolderError(f"{path}: no such file or directory (expected a model folder, train workdir or HF folder)")
    if not os.path.isdir(path):
        raise ModelFolderError(f"{path}: is a file; expected a folder. " + _expected_message(os.path.dirname(path) or "."))
    if is_model_folder(path):
        return path
    if is_model_folder(os.path.join(path, "model")):
        return os.path.join(path, "model")
    if is_hf_folder(path):
        return None
    if os.path.isdir(os.path.join(path, "checkpoints")) and not os.path.exists(os.path.join(path, "model")):
        raise ModelFolderError(
            f"{path}: a train workdir without a final model ({path}/model is missing; training may not have finished)"
        )
    raise ModelFolderError(_expected_message(path))


def tokenizer_dir_of(folder: str) -> str | None:
    """The folder holding the tokenizer files of a model folder or HF folder, if any."""
    for candidate in (os.path.join(folder, TOKENIZER_DIR), folder):
        if os.path.isfile(os.path.join(candidate, "tokenizer.json")) or os.path.isfile(
            os.path.join(candidate, "tokenizer_config.json")
        ):
            return candidate
    return None


# ----------------------------------------------------------------------------------------------
# Writing


def _to_numpy(params: Params) -> Params:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)


def _copy_tokenizer(tokenizer_dir: str, out_dir: str) -> None:
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
    if not names:
        raise ModelFolderError(f"{tokenizer_dir}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES[:5])}, ...)")
    os.makedirs(out_dir)
    for name in names:
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))


def write_params(params_dir: str, params: Params) -> None:
    """Saves params (a nested dict of arrays) as an Orbax PyTree checkpoint at `params_dir` (new)."""
    import orbax.checkpoint as ocp

    # Host arrays are written as they are: Orbax's default handler first deep-copies every numpy
    # array (a second copy of the whole model in memory), which a merge of large models cannot afford.
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
    with ocp.Checkpointer(handler) as ckpt:
        ckpt.save(os.path.abspath(params_dir), args=ocp.args.PyTreeSave(_to_numpy(params)))


# The folder publish of atomic_io under the names the merge uses (merging/streaming.py).
temp_sibling = temp_folder
publish = publish_folder


def write_model_files(folder: str, cfg: ModelConfig, tokenizer_dir: str | None, readme: str | None = None) -> None:
    """model_config.json, tokenizer/ and README.md of a model folder being built in `folder`."""
    write_json(os.path.join(folder, CONFIG_FILE), cfg.to_dict())
    if tokenizer_dir is not None:
        _copy_tokenizer(os.fspath(tokenizer_dir), os.path.join(folder, TOKENIZER_DIR))
    if readme:
        write_text(os.path.join(folder, README_FILE), readme.rstrip() + "\n")


def save_model_folder(
    path: str | os.PathLike,
    cfg: ModelConfig,
    params: Params,
    tokenizer_dir: str | os.PathLike | None,
    overwrite: bool = False,
    readme: str | None = None,
) -> str:
    """Writes a model folder atomically (temp folder + rename); returns its path.

    `tokenizer_dir` is a folder holding the tokenizer files (e.g. an HF folder or another model
    folder's tokenizer/); None writes no tokenizer. Refuses an existing `path` unless `overwrite`.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    with atomic_folder(path, overwrite) as tmp:
        write_model_files(tmp, cfg, None if tokenizer_dir is None else os.fspath(tokenizer_dir), readme)
        write_params(os.path.join(tmp, PARAMS_DIR), params)
    return path


# ----------------------------------------------------------------------------------------------
# Reading


def read_config(folder: str) -> ModelConfig:
    """The ModelConfig of a model folder; errors name the file."""
    file = os.path.join(folder, CONFIG_FILE)
    try:
        with open(file) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{file}: cannot read the model config ({e})") from e
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ModelFolderError(f"{file}: {e}") from e


def _checkpoint_tree_metadata(params_dir: str) -> Any:
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(os.path.abspath(params_dir))
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:  # an empty or partly copied params/ folder: Orbax finds no metadata
        raise ModelFolderError(f"{params_dir}: no readable parameter checkpoint (Orbax's metadata is missing; "
                               "was the folder copied or written only in part?)")
    return tree


def read_param_specs(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{leaf path: (shape, dtype)} of a model folder (or train workdir), from metadata only."""
    folder = _require_model_folder(path)
    leaves, _ = flatten_with_paths(_checkpoint_tree_metadata(os.path.join(folder, PARAMS_DIR)))
    return {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in leaves}


def _require_model_folder(path: str | os.PathLike) -> str:
    folder = resolve_model_folder(path)
    if folder is None:
        raise ModelFolderError(f"{os.fspath(path)}: a Hugging Face folder; leaf-by-leaf reading needs a model folder")
    return folder


def _nested(paths: Iterable[str], value_fn) -> dict:
    tree: dict = {}
    for p in paths:
        set_path(tree, p, value_fn(p))
    return tree


def read_leaves(path: str | os.PathLike, leaf_paths: Iterable[str]) -> dict[str, np.ndarray]:
    """{leaf path: numpy array} for only the given leaves of a model folder (Orbax partial restore)."""
    import orbax.checkpoint as ocp

    folder = _require_model_folder(path)
    leaf_paths = list(leaf_paths)
    if not leaf_paths:
        return {}
    params_dir = os.path.abspath(os.path.join(folder, PARAMS_DIR))
    item = _nested(leaf_paths, lambda p: 0)
    restore_args = _nested(leaf_paths, lambda p: ocp.RestoreArgs(restore_type=np.ndarray))
    with ocp.PyTreeCheckpointer() as ckpt:
        restored = ckpt.restore(
            params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        )
    out, missing = {}, []
    for p in leaf_paths:
        node = restored
        for k in p.split("/"):
            node = node.get(k) if isinstance(node, Mapping) else None
        if isinstance(node, np.ndarray):
            out[p] = node
        else:
            missing.append(p)
    if missing:
        raise ModelFolderError(f"{folder}: no parameter(s) {missing[:5]} in {PARAMS_DIR}/ ({len(missing)} missing)")
    return out


def read_params(folder: str) -> Params:
    """All params of a model folder as a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    params_dir = os.path.abspath(os.path.join(folder, PARAMS_DIR))
    meta = _checkpoint_tree_metadata(params_dir)
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    with ocp.PyTreeCheckpointer() as ckpt:
        params = ckpt.restore(params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return _plain(params)


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return np.asarray(tree)


def load_model(path: str | os.PathLike) -> tuple[ModelConfig, Params, str | None]:
    """(cfg, params, tokenizer_dir) of a model folder, a train workdir or an HF / ST folder."""
    path = os.fspath(path)
    folder = resolve_model_folder(path)
    if folder is None:
        cfg, params = load_hf_model(path)
        return cfg, _plain(params), tokenizer_dir_of(path)
    return read_config(folder), read_params(folder), tokenizer_dir_of(folder)

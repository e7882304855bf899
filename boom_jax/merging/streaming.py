"""Merging models stored on disk, in memory or leaf by leaf (streaming), into a model folder.

Inputs are model folders, train workdirs (WORKDIR/model), bag workdirs (DIR/members/*/) or Hugging
Face / sentence-transformers folders. The streaming merge reads a group of leaves (at most
`group_bytes`, default: the largest tensor) of one input at a time (Orbax partial restore), the first
ones while the inputs' metadata is checked and the next two in background threads while this one is
merged, and feeds them to `methods.LeafMerge`, keeping only the merged model. linear and multislerp
reduce one member at a time into float64 sums held in one block reused by every group (its pages
are faulted in once) and write each result over the last member's read of that leaf. Peak memory is
the output model plus, for those two, the float64 sums of one group and three groups of inputs
(merged, read ahead), whatever K; for the other methods the K members' (and the base's) groups and
two read ahead. Hugging Face inputs cannot be read leaf by leaf and are loaded whole. Both paths
run the same `LeafMerge` on the same arrays, so they agree exactly.

The result is written atomically: a model folder (plus, with `export=True`, the sentence-transformers
folder in OUT/export), built in a temp folder and renamed at the end; an incompatible set of inputs, an
out-of-range parameter or a non-finite merged tensor raises before anything is written. The folder
holds OUT/recipe.yml (mergekit's format, recipe.py): `merge_recipe` on it reproduces the model bit for bit.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from boom_jax import model_io
from boom_jax.hf import export_sentence_transformers
from boom_jax.merging import compat, methods, recipe
from boom_jax.models.config import ModelConfig
from boom_jax.tree_paths import set_path

EXPORT_DIR = "export"
# Reads in flight while a group is merged: one Orbax partial restore leaves a core idle part of the
# time (measured: MiniLM K = 2 merge 1.43 -> 1.20 s median with two; three: 1.17 s), each one more
# holds one more group of inputs.
READ_AHEAD = 2


@dataclasses.dataclass
class ModelSource:
    """One input model: its config, tokenizer folder, and its leaves on disk or in memory."""

    name: str
    cfg: ModelConfig
    tokenizer_dir: str | None
    folder: str | None = None  # a model folder read leaf by leaf
    params: dict | None = None  # or a whole tree in memory

    def specs(self) -> compat.Spec:
        if self.folder is not None:
            return model_io.read_param_specs(self.folder)
        return compat.spec_of(self.params)

    def read(self, paths: Sequence[str]) -> dict[str, np.ndarray]:
        if self.folder is not None:
            return model_io.read_leaves(self.folder, paths)
        flat = dict(methods.flatten_with_paths(self.params)[0])
        return {p: np.asarray(flat[p]) for p in paths}

    def read_all(self) -> dict:
        if self.params is None:
            self.params = model_io.read_params(self.folder)
        return self.params


def open_source(path: str | os.PathLike, in_memory: bool = False) -> ModelSource:
    """The ModelSource of a model folder, train workdir or HF folder (HF folders load whole)."""
    path = os.fspath(path)
    folder = model_io.resolve_model_folder(path)
    if folder is None:
        cfg, params, tok = model_io.load_model(path)
        return ModelSource(path, cfg, tok, params=params)
    source = ModelSource(path, model_io.read_config(folder), model_io.tokenizer_dir_of(folder), folder=folder)
    if in_memory:
        source.read_all()
    return source


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Input paths with each bag workdir (DIR/members/*/) replaced by its members, in name order."""
    out: list[str] = []
    for p in map(os.fspath, paths):
        members = os.path.join(p, "members")
        if os.path.isdir(members) and not model_io.is_model_folder(p) and not model_io.is_hf_folder(p):
            found = sorted(os.path.join(members, m) for m in os.listdir(members) if os.path.isdir(os.path.join(members, m)))
            if not found:
                raise model_io.ModelFolderError(f"{p}: a bag workdir with no members in {members}/")
            out += found
        else:
            out.append(p)
    return out


def leaf_groups(specs: compat.Spec, group_bytes: int) -> list[list[str]]:
    """Leaf paths in checkpoint order, split into groups of at most `group_bytes` (a bigger leaf alone)."""
    groups: list[list[str]] = []
    size = 0
    for path, (shape, dtype) in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if not groups or size + nbytes > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += nbytes
    return groups


def largest_leaf_bytes(specs: compat.Spec) -> int:
    return max(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in specs.values())


def _check(sources: list[ModelSource], base: ModelSource | None, first_specs: compat.Spec) -> None:
    compat.check_compatible(
        [first_specs] + [s.specs() for s in sources[1:]],
        configs=[s.cfg for s in sources],
        names=[s.name for s in sources],
        base=None if base is None else base.specs(),
        base_config=None if base is None else base.cfg,
        base_name=f"base {base.name}" if base is not None else "base",
    )


class _ReadAhead:
    """(group, input, its leaves of the group) for every group, the base (input -1) before the
    members, read in `READ_AHEAD` background threads that many jobs ahead of the consumer. The first
    reads start when the object is made, so they run while the caller checks the inputs' metadata
    (Python-bound, while reading is mostly TensorStore's threads); a failed check discards them
    (`close`)."""

    def __init__(self, sources: list[ModelSource], base: ModelSource | None, groups: list[list[str]]):
        self.sources, self.base, self.groups = sources, base, groups
        first = -1 if base is not None else 0
        self.jobs = [(g, i) for g in range(len(groups)) for i in range(first, len(sources))]
        self.pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="merge-read")
        self.pending = collections.deque(self.pool.submit(self._read, job) for job in self.jobs[:READ_AHEAD])

    def _read(self, job: tuple[int, int]) -> dict:
        g, i = job
        return (self.base if i < 0 else self.sources[i]).read(self.groups[g])

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        for n, job in enumerate(self.jobs):
            leaves = self.pending.popleft().result()
            if n + READ_AHEAD < len(self.jobs):
                self.pending.append(self.pool.submit(self._read, self.jobs[n + READ_AHEAD]))
            yield job[0], job[1], leaves

    def close(self) -> None:
        self.pending.clear()  # reads in flight finish in their threads; their results or errors are dropped
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "_ReadAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _merge_streaming(reads: _ReadAhead, sources, method, weights, include, exclude, params, progress) -> dict:
    merged: dict = {}
    groups, k = reads.groups, len(sources)
    bar = tqdm(total=sum(map(len, groups)), desc=f"merging ({method}, streaming)", unit="tensor", disable=not progress)
    base_leaves: dict = {}
    merges: dict[str, methods.LeafMerge] = {}
    sums = np.empty(0)
    owned = sources[-1].folder is not None  # its reads are fresh arrays: the result may overwrite them
    for g, i, leaves in reads:
        if i < 0:
            base_leaves = leaves
            continue
        if i == 0:
            # One float64 block holds the sums of every group in turn: its pages are faulted in once.
            ends = np.cumsum([leaves[p].size for p in groups[g]])
            if sums.size < ends[-1]:
                sums = np.empty(ends[-1])
            merges = {p: methods.LeafMerge(method, p, k, base_leaves.get(p), weights, include, exclude,
                                           scratch=sums[end - leaves[p].size:end], reuse_last=owned, **params)
                      for p, end in zip(groups[g], ends)}
        for path in groups[g]:
            merges[path].add(leaves.pop(path))
        if i == k - 1:
            for path in groups[g]:  # checkpoint order: the first failing leaf is the one reported
                merge = merges.pop(path)
                set_path(merged, path, merge.finish(lambda path=path: [s.read([path])[path] for s in sources]))
                bar.update(1)
            base_leaves = {}
    bar.close()
    return merged


def merge_models(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    method: str,
    weights: Any = None,
    base: str | os.PathLike | None = None,
    include: Any = None,
    exclude: Any = None,
    streaming: bool = True,
    export: bool = False,
    overwrite: bool = False,
    group_bytes: int | None = None,
    progress: bool = True,
    **params: Any,
) -> str:
    """Merges the models at `inputs` with `method` into the model folder `out_dir`; returns its path.

    `weights`, `include`, `exclude` and `params` are those of `methods.MERGE_METHODS[method]`; `base`
    is the path of the base model (task-vector methods). The merged model takes the first input's
    config and tokenizer. With `export`, OUT/export holds the sentence-transformers folder.
    """
    out_dir = os.fspath(out_dir)
    m = methods.get_method(method)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
    paths = expand_inputs(inputs)
    if not paths:
        raise methods.MergeError("no input models")
    if m.needs_base and base is None:
        raise methods.MergeError(f"{m.name} works on task vectors and needs a base model (--base)")
    # Every weight and parameter range-checked before any tensor is read.
    methods.check_settings(m, len(paths), weights, **params)
    sources = [open_source(p, in_memory=not streaming) for p in paths]
    base_source = None if base is None else open_source(base, in_memory=not streaming)
    cfg = sources[0].cfg
    tokenizer_dir = next((s.tokenizer_dir for s in sources if s.tokenizer_dir), None)
    if export and tokenizer_dir is None:
        raise model_io.ModelFolderError("cannot export: no input model has a tokenizer")
    specs = sources[0].specs()
    groups = leaf_groups(specs, group_bytes or largest_leaf_bytes(specs)) if streaming else []
    with _ReadAhead(sources, base_source, groups) as reads:  # the first group is read during the checks
        _check(sources, base_source, specs)
        methods.leaf_weights(m, weights, next(iter(specs)), len(sources))  # bad weights fail before merging
        if streaming:
            merged = _merge_streaming(reads, sources, method, weights, include, exclude, params, progress)
        else:
            merged = m([s.read_all() for s in sources], weights=weights,
                       base=None if base_source is None else base_source.read_all(),
                       include=include, exclude=exclude, **params)
    tmp = model_io.temp_sibling(out_dir)
    try:
        model_io.write_model_files(tmp, cfg, tokenizer_dir, _readme(method, paths, weights, base, params))
        with open(os.path.join(tmp, recipe.RECIPE_FILE), "w") as f:
            f.write(recipe.recipe_text(method, paths, weights, base, include, exclude, params))
        model_io.write_params(os.path.join(tmp, model_io.PARAMS_DIR), merged)
        if export:
            export_sentence_transformers(merged, cfg, tokenizer_dir, os.path.join(tmp, EXPORT_DIR))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    model_io.publish(tmp, out_dir, overwrite)
    return out_dir


def merge_recipe(
    recipe_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    streaming: bool = True,
    export: bool = False,
    overwrite: bool = False,
    group_bytes: int | None = None,
    progress: bool = True,
) -> str:
    """Runs a merge recipe (mergekit's YAML format, see recipe.py) into the model folder `out_dir`."""
    parsed = recipe.read_recipe(recipe_path)
    first = open_source(parsed.members[0])
    weights, params = recipe.merge_settings(parsed, list(first.specs()), first.cfg)
    return merge_models(parsed.members, out_dir, parsed.method, weights=weights, base=parsed.base,
                        include=parsed.include, exclude=parsed.exclude, streaming=streaming, export=export,
                        overwrite=overwrite, group_bytes=group_bytes, progress=progress, **params)


def _readme(method: str, paths: Sequence[str], weights: Any, base: Any, params: dict) -> str:
    lines = [f"# Merged model ({method})", "", "Inputs:"] + [f"- {p}" for p in paths]
    if base is not None:
        lines.append(f"\nBase: {base}")
    lines.append(f"\nWeights: {weights if weights is not None else 'uniform'}")
    if params:
        lines.append(f"Parameters: {params}")
    return "\n".join(lines)

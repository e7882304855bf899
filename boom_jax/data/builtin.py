"""Loader for the built-in multi-task corpus committed under boom_jax/data/builtin/.

The corpus (built by `boom_jax.data.build_builtin`) holds training sets in the standard JSONL line format
and evaluation tasks as `EvalTask.to_dict()` JSON, described by `manifest.json`. Loading needs only the
standard library.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Sequence

from boom_jax.data.records import EvalTask, Example, TrainDataset

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


@functools.lru_cache(maxsize=None)
def _manifest(root: str) -> dict:
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"built-in corpus manifest not found: {path} (rebuild with "
                                "`python -m boom_jax.data.build_builtin --out=boom_jax/data/builtin`)")
    return json.loads(path.read_text())


def builtin_manifest(root: str | Path = BUILTIN_DIR) -> dict:
    """The corpus manifest: per training set and evaluation task its file, type, counts and sha256."""
    return json.loads(json.dumps(_manifest(str(root))))  # a copy the caller may change


def _select(kind: str, available: Sequence[str], names: Sequence[str] | str | None) -> list[str]:
    if names is None:
        return list(available)
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise KeyError(f"unknown built-in {kind} {unknown}; available: {sorted(available)}")
    return list(names)


def _read_examples(path: Path, name: str, limit: int | None) -> list[Example]:
    examples = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if limit is not None and index >= limit:
                break
            r = json.loads(line)
            examples.append(Example(dataset=name, index=index, query=r["query"], pos=tuple(r["pos"]),
                                    neg=tuple(r["neg"]), prompt=r.get("prompt", ""), task_type=r.get("type", "retrieval")))
    return examples


def builtin_train_datasets(names: Sequence[str] | str | None = None, limit: int | None = None,
                           root: str | Path = BUILTIN_DIR) -> list[TrainDataset]:
    """The built-in training sets (all, or `names` in that order); `limit` keeps each set's first examples.

    `Example.index` is the line number in the set's file; `in_batch_negatives` and `instruction` come from
    the manifest (False for the classification set, whose other queries may share its class).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    train = _manifest(str(root))["train"]
    out = []
    for name in _select("training set", list(train), names):
        info = train[name]
        out.append(TrainDataset(name=name, task_type=info["task_type"],
                                examples=_read_examples(Path(root) / info["file"], name, limit),
                                in_batch_negatives=info["in_batch_negatives"], instruction=info["instruction"]))
    return out


def builtin_eval_tasks(names: Sequence[str] | str | None = None, domain: str | None = None,
                       root: str | Path = BUILTIN_DIR) -> list[EvalTask]:
    """The built-in evaluation tasks (all, or `names`), optionally only those of `domain` ("in" | "out")."""
    if domain not in (None, "in", "out"):
        raise ValueError(f"domain must be 'in', 'out' or None, got {domain!r}")
    tasks = _manifest(str(root))["eval"]
    out = []
    for name in _select("evaluation task", list(tasks), names):
        info = tasks[name]
        if domain is not None and info["domain"] != domain:
            continue
        with gzip.open(Path(root) / info["file"], "rt", encoding="utf-8") as handle:
            out.append(EvalTask.from_dict(json.load(handle)))
    return out

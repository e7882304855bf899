"""Files and folders written whole or not at all: each is written to a temporary sibling, then
renamed into place.

A run killed mid-write leaves the previous file or folder (or none), never a half-written one.
Temporaries are named `NAME.tmp-XXXXXXXX` (files) and `.NAME.tmp-XXXXXXXX` (folders; a replaced
folder is parked as `.NAME.tmp-XXXXXXXX.old` until the swap is done), so
training/workdir_lock.remove_stale_temp finds what a killed run left. The lowest layer: imports
nothing of the project.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)`, then renames tmp_path to `path` (creating its folder)."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = True) -> None:
    """Indented JSON (UTF-8, non-ASCII kept, trailing newline), atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def temp_folder(path: str | os.PathLike) -> str:
    """A fresh hidden folder next to `path` (same filesystem, so a rename publishes it atomically)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def publish_folder(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Renames the finished folder `tmp` to `path`.

    An existing `path` is refused (FileExistsError; `tmp` is removed) unless `overwrite`; then it is
    swapped out only at the very end, and put back if the final rename fails.
    """
    tmp, path = os.fspath(tmp), os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    if not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    old = tmp + ".old"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """`with atomic_folder(out) as tmp:` fill `tmp`; on success it becomes `out` (`publish_folder`),
    on an exception it is removed and `out` is untouched."""
    tmp = temp_folder(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, path, overwrite)

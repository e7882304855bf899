"""Files written whole or not at all: each is written to a temporary sibling, then renamed into place.

A run killed mid-write leaves the previous file (or none), never a half-written one. The lowest layer:
imports nothing of the project.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
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

"""Reader for dictd dictionaries (`.index` + `.dict.dz`), the format of dict-gcide and dict-foldoc."""

from __future__ import annotations

import gzip
from pathlib import Path

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def _decode_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64_VALUE[char]
    return value


def read_dictd(index_path: Path, dict_path: Path) -> list[tuple[str, str]]:
    """All (headword, entry text) pairs in index order; entries with several headwords appear once each."""
    data = gzip.open(dict_path).read()
    entries = []
    for line_number, line in enumerate(Path(index_path).read_text("utf-8", "replace").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{index_path}:{line_number}: expected 'word<TAB>offset<TAB>length', got {line!r}")
        start, length = _decode_number(parts[1]), _decode_number(parts[2])
        entries.append((parts[0], data[start : start + length].decode("utf-8", "replace")))
    return entries

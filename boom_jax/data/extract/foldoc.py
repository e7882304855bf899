"""FOLDOC (Free On-line Dictionary of Computing) entries and their <category> tags, from dict-foldoc."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from boom_jax.data.extract.dictd import read_dictd
from boom_jax.data.extract.text import squash

_CATEGORY = re.compile(r"<([a-z][a-z ,]*)>")
_DATE = re.compile(r"\(\d{4}-\d\d-\d\d\)")


@dataclasses.dataclass(frozen=True)
class FoldocEntry:
    term: str
    category: str  # the first <category> of the entry, "" when none
    definition: str


def read_foldoc(dictd_dir: Path) -> list[FoldocEntry]:
    """Entries with their definition text (cross-reference braces, dates and category tags removed)."""
    dictd_dir = Path(dictd_dir)
    out = []
    seen = set()
    for term, text in read_dictd(dictd_dir / "foldoc.index", dictd_dir / "foldoc.dict.dz"):
        if term.startswith("00database") or text in seen:
            continue
        seen.add(text)
        head, _, body = text.partition("\n")
        match = _CATEGORY.search(body)
        category = match.group(1).split(",")[0].strip() if match else ""
        definition = squash(_DATE.sub(" ", _CATEGORY.sub(" ", body)).replace("{", "").replace("}", ""))
        if len(definition.split()) >= 5:
            out.append(FoldocEntry(squash(head), category, definition))
    return out

"""Quotations by topic from the BSD fortune files (Debian fortunes): each file is one topic."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from boom_jax.data.extract.text import squash

_OVERSTRIKE = re.compile(r".\x08")  # "_\bx" underlining and "x\bx" bold of the old terminal files


@dataclasses.dataclass(frozen=True)
class Fortune:
    topic: str  # the fortune file's name: "science", "food", ...
    text: str  # whitespace squashed, attribution kept


def read_fortunes(fortune_dir: Path, topics: tuple[str, ...]) -> list[Fortune]:
    """The `%`-separated entries of each topic file, in file order."""
    out = []
    for topic in topics:
        raw = (Path(fortune_dir) / topic).read_text("utf-8", errors="replace")
        for entry in raw.split("\n%\n"):
            text = squash(_OVERSTRIKE.sub("", entry).strip().strip("%"))
            if text:
                out.append(Fortune(topic, text))
    return out

"""NAME summary -> DESCRIPTION pairs from Linux man pages (Debian manpages, manpages-dev), rendered by groff."""

from __future__ import annotations

import dataclasses
import gzip
import re
import subprocess
from pathlib import Path

from boom_jax.data.extract.text import squash

_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&()-]*$")
# plain text, no hyphenation, one very long line per paragraph, tbl tables, no overstrike/underline codes
GROFF = ("groff", "-man", "-t", "-Tutf8", "-P-cbou", "-rLL=3000n", "-rHY=0")


@dataclasses.dataclass(frozen=True)
class ManPage:
    page: str  # "hsearch.3"
    names: str  # "hcreate, hdestroy, hsearch, ..."
    summary: str  # the NAME line after the dash: "hash table management"
    description: str  # the DESCRIPTION section, paragraphs joined by single spaces


def render(source: bytes) -> str:
    """A man page's roff source as plain text (groff's warnings dropped)."""
    result = subprocess.run(GROFF, input=source, capture_output=True, check=True)
    return result.stdout.decode("utf-8", errors="replace")


def sections(text: str) -> dict[str, str]:
    """Rendered page -> {HEADING: body}, body paragraphs squashed and joined by single spaces."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = line.strip() if _HEADING.match(line.strip()) else None
            if current:
                out.setdefault(current, [])
        elif current and line.strip():
            out[current].append(line.strip())
    return {k: squash(" ".join(v)) for k, v in out.items()}


def read_manpages(man_dirs: list[Path], min_description_words: int = 15) -> list[ManPage]:
    """Every page (not `.so` aliases) with a `names - summary` NAME line and a DESCRIPTION, sorted by path."""
    out = []
    paths = sorted(p for d in man_dirs for p in Path(d).glob("man*/*.gz"))
    for path in paths:
        source = gzip.decompress(path.read_bytes())
        body = [l for l in source.splitlines() if l.strip() and not l.startswith((b'.\\"', b"'\\\""))]
        if body and body[0].startswith(b".so "):
            continue
        parts = sections(render(source))
        names, dash, summary = parts.get("NAME", "").partition(" - ")
        description = parts.get("DESCRIPTION", "")
        if dash and summary and len(description.split()) >= min_description_words:
            out.append(ManPage(path.name.removesuffix(".gz"), names.strip(), summary.strip(), description))
    return out

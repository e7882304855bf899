"""Doc comment -> function pairs from the Go standard library sources (Debian golang-*-src)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from boom_jax.data.extract.text import squash


@dataclasses.dataclass(frozen=True)
class GoFunction:
    path: str
    line: int
    doc: str
    code: str


def read_go_functions(src_dir: Path, min_doc_words: int = 4, min_lines: int = 3, max_lines: int = 60) -> list[GoFunction]:
    """Top-level `func` declarations preceded by a `//` doc comment; tests, testdata and vendor are skipped."""
    src_dir = Path(src_dir)
    out = []
    for path in sorted(src_dir.rglob("*.go")):
        rel = path.relative_to(src_dir)
        if path.name.endswith("_test.go") or {"testdata", "vendor", "internal"} & set(rel.parts):
            continue
        lines = path.read_text("utf-8", errors="replace").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("func ") and lines[i].rstrip().endswith("{"):
                j = i - 1
                while j >= 0 and lines[j].startswith("//"):
                    j -= 1
                doc = squash(" ".join(line[2:] for line in lines[j + 1 : i]))
                end = i + 1
                while end < len(lines) and lines[end] != "}":
                    end += 1
                body = lines[i : end + 1]
                if len(doc.split()) >= min_doc_words and min_lines + 2 <= len(body) <= max_lines:
                    out.append(GoFunction(str(rel), i + 1, doc, "\n".join(body)))
                i = end + 1
            else:
                i += 1
    return out

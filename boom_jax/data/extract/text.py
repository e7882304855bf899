"""Small text helpers shared by the extractors and the builder."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


def squash(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def clip(text: str, max_chars: int) -> str:
    """Cut `text` at a word boundary to at most `max_chars` characters."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[: space if space > max_chars // 2 else max_chars].rstrip()


def words(text: str) -> list[str]:
    """Lowercase alphanumeric tokens (the BM25 tokenization)."""
    return _WORD.findall(text.lower())


def fingerprint(text: str) -> str:
    """Key for near-duplicate detection: lowercase alphanumeric tokens joined by single spaces."""
    return " ".join(words(text))

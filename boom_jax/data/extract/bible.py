"""Verse-aligned KJV and World English Bible text from the Debian sword-text-* modules (via pysword)."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path

from tqdm import tqdm

from boom_jax.data.extract.text import squash

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:?!’”)])")


@dataclasses.dataclass(frozen=True)
class Verse:
    testament: str  # "ot" | "nt"
    book: str
    chapter: int
    verse: int
    text: str


def clean_osis(markup: str) -> str:
    """OSIS markup -> plain text: notes dropped, tags replaced by spaces (pysword's own cleaning glues words)."""
    text = _TAG.sub(" ", _NOTE.sub(" ", markup))
    text = html.unescape(text).replace("¶", " ")
    text = squash(text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def read_bible(sword_dir: Path, module_key: str) -> list[Verse]:
    """Every non-empty verse of a sword module, in canonical order."""
    from pysword.modules import SwordModules  # only needed to rebuild the corpus

    modules = SwordModules(str(sword_dir))
    modules.parse_modules()
    bible = modules.get_bible_from_module(module_key)
    verses = []
    books = [(testament, book) for testament, group in bible.get_structure().get_books().items() for book in group]
    for testament, book in tqdm(books, desc=f"sword {module_key}"):
        for chapter, length in enumerate(book.chapter_lengths, 1):
            numbers = list(range(1, length + 1))
            texts = bible.get(books=[book.osis_name], chapters=[chapter], verses=numbers, clean=False, join="\x00")
            for number, markup in zip(numbers, texts.split("\x00")):
                text = clean_osis(markup)
                if text:
                    verses.append(Verse(testament, book.osis_name, chapter, number, text))
    return verses

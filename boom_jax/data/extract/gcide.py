"""Webster 1913 definitions from GCIDE (dict-gcide), excluding text that GCIDE copied from WordNet."""

from __future__ import annotations

import re
from pathlib import Path

from boom_jax.data.extract.dictd import read_dictd
from boom_jax.data.extract.text import squash

_LETTER_MARK = re.compile(r"\[[=.'\"`~^-]?([A-Za-z]{1,2})[\^~]?\]")  # [ae], [=a], ["o], [a^]: accented letters
_SOURCE_TAG = re.compile(r"\[[^\[\]]*(?:Webster|PJC|WordNet|Century)[^\[\]]*\]")


def _strip_brackets(text: str) -> str:
    """Removes every top-level [...] group (etymologies, pronunciation marks), nested ones included."""
    out, depth = [], 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return "".join(out)


def first_webster_definition(entry: str) -> str:
    """The first sense of a Webster entry, or "" when that sense was copied from WordNet or is unusable."""
    tag = _SOURCE_TAG.search(entry)
    if not tag or "WordNet" in tag.group(0):
        return ""
    head, _, body = _LETTER_MARK.sub(r"\1", entry[: tag.start()]).partition("\n")
    sense = _strip_brackets(head.partition(")")[2] + "\n" + body) if "(" in head else _strip_brackets(body)
    sense = sense.replace("{", "").replace("}", "")
    sense = re.sub(r"^[\s,;]*(?:[a-z]+\.\s*;?\s*)*", "", sense)  # part-of-speech remnants ("n.", "v. t.")
    sense = re.sub(r"^\s*(?:\([A-Z][\w. &]*\)\s*)+", "", sense)  # domain labels such as (Zool.)
    sense = re.sub(r"^\s*1\.\s*", "", sense)
    sense = squash(sense.split(" --")[0].split("\n\n")[0])
    if len(sense.split()) < 4 or not sense[:1].isupper() or "\\" in sense or "]" in sense:
        return ""
    return sense


def read_gcide(dictd_dir: Path) -> dict[str, str]:
    """Lowercased single-word headword -> first Webster definition, for headwords with one entry only."""
    dictd_dir = Path(dictd_dir)
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for word, text in read_dictd(dictd_dir / "gcide.index", dictd_dir / "gcide.dict.dz"):
        key = word.lower()
        if not re.fullmatch(r"[a-z]+", key):
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, text)
    out = {}
    for key in sorted(first):
        if counts[key] == 1:
            definition = first_webster_definition(first[key])
            if definition:
                out[key] = definition
    return out

"""WordNet 3.0 synsets from the `data.*` files of the Debian wordnet-base package."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

_QUOTED = re.compile(r'"([^"]+)"')


@dataclasses.dataclass(frozen=True)
class Synset:
    offset: str
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    gloss: str
    examples: tuple[str, ...]


def _split_gloss(text: str) -> tuple[str, tuple[str, ...]]:
    examples = tuple(e.strip() for e in _QUOTED.findall(text) if len(e.split()) >= 3)
    definition = _QUOTED.sub("", text)
    definition = re.sub(r"\s*;\s*(;\s*)*", "; ", definition).strip(" ;")
    return definition, examples


def read_wordnet(wordnet_dir: Path) -> list[Synset]:
    """Every synset of the four `data.<pos>` files, in file order (noun, verb, adj, adv)."""
    synsets = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(wordnet_dir) / f"data.{pos}"
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line_number, line in enumerate(handle, 1):
                if line.startswith("  "):
                    continue  # licence header
                head, sep, gloss = line.partition(" | ")
                if not sep:
                    raise ValueError(f"{path}:{line_number}: no ' | ' gloss separator")
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(n_words))
                lemmas = tuple(re.sub(r"\(\w+\)$", "", lemma) for lemma in lemmas)
                definition, examples = _split_gloss(gloss.strip())
                synsets.append(
                    Synset(
                        offset=f"{fields[0]}-{fields[2]}",
                        pos=pos,
                        lexname=LEXNAMES[int(fields[1])],
                        lemmas=lemmas,
                        gloss=definition,
                        examples=examples,
                    )
                )
    return synsets

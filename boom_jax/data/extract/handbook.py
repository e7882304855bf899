"""Title -> text units of The Debian Administrator's Handbook (Debian debian-handbook, English HTML).

A unit is a section (h3-h5 heading) or a sidebar box ("TIP Incremental updates"); its text is the prose
of its own paragraphs, without nested units, screen listings or program examples.
"""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

from boom_jax.data.extract.text import squash

_NUMBER = re.compile(r"^(?:[A-Z]\.)?\d+(?:\.\d+)*\.?\s+")  # "6.2.1. ", "B.1. "
# the labels of the book's sidebar boxes, longest first ("TOOL" after "TOOLS")
SIDEBAR_KINDS = tuple(sorted((
    "ALTERNATIVE", "BACK TO BASICS", "BEHIND THE SCENES", "BEWARE", "CAUTION", "COMMUNITY", "COMPLEMENTS",
    "CULTURE", "DEBIAN POLICY", "DEBIAN SPECIFICITY", "DISCOVERY", "DOCUMENTATION", "EXTRA", "GOING FURTHER",
    "HARDWARE", "HISTORY", "IN PRACTICE", "NOTE", "PERSPECTIVE", "QUICK LOOK", "SECURITY", "SPECIAL CASE",
    "SPECIFIC CASE", "THE BROADER VIEW", "TIP", "TOOL", "TOOLS", "VOCABULARY"), key=lambda k: (-len(k), k)))
_SKIP = {"pre", "table", "script", "style"}


@dataclasses.dataclass(frozen=True)
class HandbookUnit:
    page: str
    kind: str  # "section" or the sidebar kind ("TIP", "CULTURE", ...)
    parent: str  # title of the enclosing section ("" for none)
    title: str
    text: str


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []  # (tag, role) role: unit | para | title | skip | ""
        self.units: list[dict] = []  # {"kind", "title", "text", "parent"}
        self.open_units: list[int] = []

    def _role(self, tag: str, cls: str) -> str:
        if tag in _SKIP:
            return "skip"
        if tag == "div" and cls in ("section", "sidebar"):
            return "unit"
        if tag == "div" and cls == "para":
            return "para"
        if (re.fullmatch(r"h[2-5]", tag) or tag == "p") and cls == "title":
            return "title"
        return ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        cls = dict(attrs).get("class") or ""
        role = self._role(tag, cls)
        if role == "unit":
            parent = self.units[self.open_units[-1]]["title"] if self.open_units else ""
            self.units.append({"kind": cls, "title": "", "text": [], "parent": parent, "title_done": False})
            self.open_units.append(len(self.units) - 1)
        self.stack.append((tag, role))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, role = self.stack.pop()
            if role == "unit":
                self.open_units.pop()
            if role == "para" and self.open_units:
                self.units[self.open_units[-1]]["text"].append(" ")  # paragraphs apart, however the HTML is laid
            if role == "title" and self.open_units:
                self.units[self.open_units[-1]]["title_done"] = True
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.open_units or any(role == "skip" for _, role in self.stack):
            return
        unit = self.units[self.open_units[-1]]
        roles = [role for _, role in self.stack]
        innermost = max(i for i, r in enumerate(roles) if r == "unit")
        inside = roles[innermost + 1 :]
        if "title" in inside and not unit["title_done"]:
            unit["title"] += data
        elif "para" in inside:
            unit["text"].append(data)


def read_handbook_page(path: Path) -> list[HandbookUnit]:
    parser = _Parser()
    parser.feed(Path(path).read_text("utf-8", errors="replace"))
    out = []
    for unit in parser.units:
        title, text, parent = squash(unit["title"]), squash("".join(unit["text"])), squash(unit["parent"])
        kind = "section"
        if unit["kind"] == "sidebar":
            kind = next((k for k in SIDEBAR_KINDS if title.startswith(k + " ")), "NOTE")
            title = title.removeprefix(kind).strip()
        out.append(HandbookUnit(Path(path).name, kind, _NUMBER.sub("", parent), _NUMBER.sub("", title), text))
    return out


def read_handbook(html_dir: Path, min_words: int = 25) -> list[HandbookUnit]:
    """Units with a title and at least `min_words` words of prose, pages in file-name order."""
    units = [u for path in sorted(Path(html_dir).glob("*.html")) for u in read_handbook_page(path)]
    return [u for u in units if u.title and len(u.text.split()) >= min_words]

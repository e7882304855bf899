"""Question -> answer pairs from FAQs shipped in Debian docs: the Python FAQ (reST) and perlfaq (POD)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from boom_jax.data.extract.text import squash

_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_RST_ROLE = re.compile(r":[\w:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_POD_CODE = re.compile(r"[A-Z]<+\s*(.*?)\s*>+")


@dataclasses.dataclass(frozen=True)
class FaqEntry:
    source: str
    question: str
    answer: str


def _clean_rst(text: str) -> str:
    text = _RST_ROLE.sub(r"\1", text)
    text = re.sub(r"^\.\. .*$", " ", text, flags=re.M)
    return squash(text.replace("``", "").replace("`_", "").replace("`", "").replace("::", ":"))


def read_python_faq(faq_dir: Path) -> list[FaqEntry]:
    """Sections of the Python FAQ whose title is a question."""
    out = []
    for path in sorted(Path(faq_dir).glob("*.rst.txt")):
        lines = path.read_text("utf-8", errors="replace").splitlines()
        headings = [i for i in range(1, len(lines)) if _RST_UNDERLINE.match(lines[i]) and lines[i - 1].strip()
                    and len(lines[i].strip()) >= len(lines[i - 1].strip()) - 1]
        for k, i in enumerate(headings):
            title = lines[i - 1].strip()
            end = headings[k + 1] - 1 if k + 1 < len(headings) else len(lines)
            answer = _clean_rst("\n".join(lines[i + 1 : end]))
            if title.endswith("?") and len(answer.split()) >= 8:
                out.append(FaqEntry(f"python-faq/{path.name}", _clean_rst(title), answer))
    return out


def read_perlfaq(pod_dir: Path) -> list[FaqEntry]:
    """`=head2` questions of perlfaq1..9 with the text up to the next heading."""
    out = []
    for path in sorted(Path(pod_dir).glob("perlfaq[1-9].pod")):
        blocks = re.split(r"^=head\d\s+", path.read_text("utf-8", errors="replace"), flags=re.M)
        for block in blocks[1:]:
            title, _, body = block.partition("\n")
            body = re.sub(r"^=\w+.*$", " ", body, flags=re.M)
            body = re.sub(r"X<+[^>]*>+", " ", body)  # index entries
            answer = squash(_POD_CODE.sub(r"\1", body))
            title = squash(_POD_CODE.sub(r"\1", title))
            if title.endswith("?") and len(answer.split()) >= 8:
                out.append(FaqEntry(f"perlfaq/{path.name}", title, answer))
    return out

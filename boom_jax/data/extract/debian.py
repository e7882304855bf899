"""Debian package descriptions: join the apt `Packages` index with `Translation-en` long descriptions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from boom_jax.data.extract.text import squash

# Package families whose members share boilerplate descriptions: split train/eval by family, not by package.
FAMILY_PREFIXES = (
    "libghc-", "haskell-", "node-", "golang-", "r-cran-", "r-bioc-", "r-other-", "libjs-", "python-", "python3-",
    "ruby-", "php-", "lua-", "ocaml-", "libocaml-", "elpa-", "texlive-", "fonts-", "libtest-", "libdevel-",
    "librust-", "rust-", "gir1.2-", "xfonts-", "hunspell-", "myspell-", "aspell-", "task-", "firmware-",
)


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    package: str
    source: str
    section: str
    short: str
    long: str

    @property
    def family(self) -> str:
        """The unit of the train/eval split: a family prefix when one applies, else the source package."""
        for prefix in FAMILY_PREFIXES:
            if self.source.startswith(prefix) or self.package.startswith(prefix):
                return prefix
        return self.source


def _paragraphs(path: Path):
    fields: dict[str, str] = {}
    last = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                if fields:
                    yield fields
                fields, last = {}, None
            elif line[0] in " \t" and last is not None:
                fields[last] += "\n" + line
            else:
                key, _, value = line.partition(":")
                last = key
                fields[key] = value.strip()
    if fields:
        yield fields


def _long_text(description_en: str) -> str:
    lines = description_en.split("\n")[1:]
    paragraphs, current = [], []
    for line in lines:
        line = line[1:] if line.startswith(" ") else line
        if line.strip() == ".":
            paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    paragraphs.append(" ".join(current))
    return "\n".join(squash(p) for p in paragraphs if p.strip())


def read_debian(packages_path: Path, translation_path: Path) -> list[DebianPackage]:
    """One record per binary package that has a long English description, sorted by package name."""
    long_by_md5 = {}
    for fields in _paragraphs(translation_path):
        if "Description-md5" in fields and "Description-en" in fields:
            long_by_md5[fields["Description-md5"]] = _long_text(fields["Description-en"])
    records = {}
    for fields in _paragraphs(packages_path):
        md5 = fields.get("Description-md5")
        long = long_by_md5.get(md5 or "")
        if not long or "Package" not in fields:
            continue
        source = fields.get("Source", fields["Package"]).split(" ")[0]
        records[fields["Package"]] = DebianPackage(
            package=fields["Package"],
            source=source,
            section=fields.get("Section", "unknown").split("/")[-1],
            short=squash(fields.get("Description", "")),
            long=long,
        )
    return [records[name] for name in sorted(records)]

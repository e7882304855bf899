"""Builds the extra out-of-domain dev tasks and adds them to the built-in corpus (boom_jax/data/builtin/).

    python -m boom_jax.data.build_ood [--out=boom_jax/data/builtin] [--cache=~/.cache/boom_jax_build] [--seed=20261129]

(the flags are `build_builtin`'s). Run it after `build_builtin`, which rewrites manifest.json and NOTICE
without these tasks. The tasks come from human-written text in Debian packages that no training source
touches, none from a published benchmark collection:

- manpage_summary_retrieval: a Linux man page's NAME summary ("hash table management") -> its DESCRIPTION
  (Debian manpages, manpages-dev; rendered with groff); the function names are left out of the query.
- handbook_section_retrieval: "section: heading" of The Debian Administrator's Handbook -> the prose of
  that section or sidebar box (Debian debian-handbook, English HTML).
- fortune_topic_classification / fortune_topic_clustering: a quotation or joke -> the topic file of the BSD
  fortune collection it ships in (Debian fortunes).

Every evaluation text equal to, or half covered by the word 4-grams of, a training text of the committed
corpus is dropped (`build_builtin.remove_leaks`); within a task, texts and queries are unique. Sampling is
seeded (`random.Random`, sorted inputs), the files are written with gzip mtime 0, so a rebuild with the
same package versions gives the same bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import subprocess
from pathlib import Path

from absl import app, flags, logging

from boom_jax.atomic_io import atomic_write, write_text
from boom_jax.data import build_builtin as bb
from boom_jax.data.extract import fortunes, handbook, manpages
from boom_jax.data.extract.near_dup import NearDuplicateIndex
from boom_jax.data.extract.text import clip, fingerprint, words
from boom_jax.data.records import EvalTask

FLAGS = flags.FLAGS  # --out, --cache and --seed: build_builtin.define_flags()

OOD_PACKAGES = ("manpages", "manpages-dev", "fortunes", "debian-handbook")
HANDBOOK_HTML = "debian-handbook/usr/share/doc/debian-handbook/html/en-US"
FORTUNE_DIR = "fortunes/usr/share/games/fortunes"
# topic files with one clear subject each (the general ones, "people", "wisdom", "cookie", "zippy", ... left out)
FORTUNE_TOPICS = ("art", "computers", "drugs", "education", "food", "law", "love", "medicine", "politics",
                  "science", "songs-poems", "sports", "startrek", "work")
FORTUNE_PER_TOPIC = 60
MAX_DOC_CHARS = 800  # shorter than build_builtin's 1200: each task encodes in well under a minute on 2 cores
LICENCES = {
    "manpages": "Linux man-pages 6.03 (Debian manpages, manpages-dev): per page the Linux-man-pages-copyleft, "
                "GPL-2+, BSD or Expat licence (see the packages' copyright files).",
    "handbook": "The Debian Administrator's Handbook, Raphael Hertzog and Roland Mas (Debian debian-handbook): "
                "GPL-2+ or CC-BY-SA-3.0.",
    "fortunes": "BSD fortune collection (Debian fortunes, fortune-mod): BSD licence.",
}
NOTICE_HEADER = "Extra out-of-domain evaluation tasks (python -m boom_jax.data.build_ood):"
TASK_LICENCES = {"manpage_summary_retrieval": "manpages", "handbook_section_retrieval": "handbook",
                 "fortune_topic_classification": "fortunes", "fortune_topic_clustering": "fortunes"}


def fetch_ood_sources(cache: Path) -> dict[str, str]:
    """Downloads and unpacks the packages into `cache` (as build_builtin does); returns their versions."""
    debs, unpacked = cache / "debs", cache / "x"
    debs.mkdir(parents=True, exist_ok=True)
    versions = {}
    for package in OOD_PACKAGES:
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            bb.run_command(["apt-get", "download", package], debs)
            found = sorted(debs.glob(f"{package}_*.deb"))
        versions[package] = found[-1].name.split("_")[1].replace("%3a", ":")
        if not (unpacked / package).exists():
            bb.run_command(["dpkg-deb", "-x", str(found[-1]), str(unpacked / package)], cache)
    groff = subprocess.run(["groff", "--version"], capture_output=True, text=True, check=True).stdout
    versions["groff"] = groff.splitlines()[0].split()[-1]
    return versions


def training_texts(root: Path) -> list[str]:
    """Every query, positive and negative of the corpus' training sets, as committed."""
    manifest = json.loads((root / "manifest.json").read_text())
    texts = set()
    for info in manifest["train"].values():
        with gzip.open(root / info["file"], "rt", encoding="utf-8") as handle:
            for line in handle:
                r = json.loads(line)
                texts.update([r["query"], *r["pos"], *r["neg"]])
    return sorted(texts)


def _unique_by(items: list, key) -> list:
    """Items whose key occurs exactly once (an ambiguous query or a repeated text is dropped altogether)."""
    count = collections.Counter(key(x) for x in items)
    return [x for x in items if count[key(x)] == 1]


# ----------------------------------------------------------------------------- tasks


def build_manpages(cache: Path, seed: int) -> EvalTask:
    x = cache / "x"
    pages = bb.cached(cache, "manpages", lambda: manpages.read_manpages(
        [x / "manpages/usr/share/man", x / "manpages-dev/usr/share/man"]))
    # alias pages (symlinks) repeat a page: keep one per description, then only unambiguous summaries
    pages = list({fingerprint(p["description"]): p for p in sorted(pages, key=lambda p: p["page"])}.values())
    pages = _unique_by(pages, lambda p: fingerprint(p["summary"]))
    pages = [p for p in pages if len(words(p["summary"])) >= 3]
    logging.info("manpages: %d pages with a unique summary", len(pages))
    doc = lambda p: clip(p["description"], MAX_DOC_CHARS)
    return bb.retrieval_task(
        "manpage_summary_retrieval", "out",
        "Man page NAME summary (the part after the dash) -> the page's DESCRIPTION (Linux man-pages, sections 2-7).",
        "Given the one-line summary of a Unix manual page, retrieve the page's description",
        [(p["summary"], doc(p)) for p in pages], [doc(p) for p in pages], seed)


def build_handbook(cache: Path, seed: int) -> EvalTask:
    units = bb.cached(cache, "debian_handbook", lambda: handbook.read_handbook(cache / "x" / HANDBOOK_HTML))
    query = lambda u: f"{u['parent']}: {u['title']}" if u["parent"] else u["title"]
    units = _unique_by(_unique_by(units, lambda u: fingerprint(u["text"])), lambda u: fingerprint(query(u)))
    logging.info("handbook: %d sections and sidebars", len(units))
    doc = lambda u: clip(u["text"], MAX_DOC_CHARS)
    return bb.retrieval_task(
        "handbook_section_retrieval", "out",
        "Section heading (with its parent section) -> the section's or sidebar's text (The Debian Administrator's Handbook).",
        "Given a heading from a system administration handbook, retrieve the text of that section",
        [(query(u), doc(u)) for u in units], [doc(u) for u in units], seed)


def build_fortunes(cache: Path, seed: int) -> list[EvalTask]:
    items = bb.cached(cache, "fortunes", lambda: fortunes.read_fortunes(cache / "x" / FORTUNE_DIR, FORTUNE_TOPICS))
    items = [f for f in items if 6 <= len(f["text"].split()) <= 120]
    items = _unique_by(items, lambda f: fingerprint(f["text"]))  # a quote filed under two topics is dropped
    tasks = bb.labelled_tasks("fortune_topic", "topic file of a BSD fortune (quotation or joke)",
                              [(clip(f["text"], 600), f["topic"]) for f in items], len(FORTUNE_TOPICS),
                              FORTUNE_PER_TOPIC, seed)
    return [dataclasses.replace(t, domain="out") for t in tasks]


def build_tasks(cache: Path, seed: int) -> list[EvalTask]:
    return [build_manpages(cache, seed), build_handbook(cache, seed), *build_fortunes(cache, seed)]


# ----------------------------------------------------------------------------- output


def remove_training_leaks(tasks: list[EvalTask], train_texts: list[str]) -> list[EvalTask]:
    train_fps = {fingerprint(t) for t in train_texts}
    near = NearDuplicateIndex(train_texts)
    clean = []
    for task in tasks:
        task, dropped = bb.remove_leaks(task, train_fps, near)
        logging.info("%s: dropped %d leaked or near-duplicate texts", task.name, dropped)
        clean.append(task)
    return clean


def notice_text(old: str) -> str:
    """NOTICE with this builder's block (replacing an earlier one) at its end."""
    kept = old.split(NOTICE_HEADER)[0].rstrip("\n")
    block = [NOTICE_HEADER] + [f"- {', '.join(sorted(n for n, s in TASK_LICENCES.items() if s == src))}: {text}"
                               for src, text in LICENCES.items()]
    return kept + "\n\n" + "\n".join(block) + "\n"


def write_tasks(out: Path, tasks: list[EvalTask], versions: dict[str, str]) -> dict:
    """Writes the task files and adds them (with BM25 baselines and source versions) to manifest.json and NOTICE."""
    manifest = json.loads((out / "manifest.json").read_text())
    for task in tasks:
        path = out / "eval" / f"{task.name}.json.gz"
        text = json.dumps(task.to_dict(), ensure_ascii=False, sort_keys=True)
        atomic_write(path, lambda tmp, text=text: bb.write_gzip(Path(tmp), text))
        info = {"file": f"eval/{task.name}.json.gz", "type": task.type, "domain": task.domain,
                "counts": bb.task_counts(task), "sha256": bb.sha256_of(path)}
        if task.type == "retrieval":
            info["bm25_ndcg_at_10"] = bb.bm25_ndcg_at_10(task)
        manifest["eval"][task.name] = info
    manifest["source_versions"].update(versions)
    write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    write_text(out / "NOTICE", notice_text((out / "NOTICE").read_text()))
    return manifest


def build(out: Path, cache: Path, seed: int) -> dict:
    out, cache = Path(out), Path(cache)
    versions = fetch_ood_sources(cache)
    tasks = remove_training_leaks(build_tasks(cache, seed), training_texts(out))
    return write_tasks(out, tasks, versions)


def main(argv: list[str]) -> None:
    del argv
    manifest = build(Path(FLAGS.out), Path(FLAGS.cache), FLAGS.seed)
    for name in TASK_LICENCES:
        info = manifest["eval"][name]
        print(f"eval  {name:32s} {info['domain']:3s} {info['type']:15s} {info['counts']} "
              f"bm25 ndcg@10 {info.get('bm25_ndcg_at_10', '-')}")


if __name__ == "__main__":
    bb.define_flags()
    app.run(main)

"""Builds the built-in multi-task corpus (boom_jax/data/builtin/) from text that ships offline.

    python -m boom_jax.data.build_builtin --out=boom_jax/data/builtin [--cache=~/.cache/boom_jax_build]

Rebuilding needs (using the corpus needs none of this):
- apt-get (the Debian packages are fetched with `apt-get download`, unpacked with `dpkg-deb -x`, and the
  Debian long descriptions with a private `apt-get update` into the cache; the system apt lists are untouched);
- `pip install pysword==0.2.8` into the virtualenv (reads the sword Bible modules).
Raw sources stay in the cache folder outside the repository. The build is deterministic: inputs are
sorted and every random choice uses `random.Random(seed)` / fixed string keys. Output is written to a temp
folder next to `--out` and renamed into place at the end.

Leakage rules: Debian split by source package family, WordNet/GCIDE by disjoint words, Bible by Testament,
Python deduplicated docstrings and split by top-level module; every evaluation text whose normalized form
(lowercase alphanumeric tokens) equals any training text is removed from evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from absl import app, flags, logging
from tqdm import tqdm

from boom_jax.atomic_io import atomic_write, publish_folder, temp_folder
from boom_jax.data.extract import bible, debian, faq, foldoc, gcide, golang, python_lib, wordnet
from boom_jax.data.extract.bm25 import Bm25Index
from boom_jax.data.extract.near_dup import NearDuplicateIndex
from boom_jax.data.extract.text import clip, fingerprint, squash, words
from boom_jax.data.records import EvalTask

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The builders' command-line flags (build_builtin's and build_ood's), defined only when one of them
    runs as a command: importing this module must not claim flag names such as --out for a process."""
    flags.DEFINE_string("out", "boom_jax/data/builtin", "Output folder (replaced atomically).")
    flags.DEFINE_string("cache", os.path.expanduser("~/.cache/boom_jax_build"), "Cache for raw sources.")
    flags.DEFINE_integer("seed", 20261129, "Builder seed.")
    flags.DEFINE_integer("train_size", 4000, "Target examples per training set.")

DEB_PACKAGES = (
    "wordnet-base", "dict-gcide", "dict-foldoc", "golang-1.19-src", "sword-text-kjv", "sword-text-web",
    "python3.11-doc", "perl-doc",
)
APT_LISTS = "deb.debian.org_debian_dists_bookworm_main_"
NUM_NEG = 3
MAX_DOC_CHARS = 1200
EVAL_QUERIES = 250
EVAL_CORPUS = 1500

LICENCES = {
    "debian": "Debian package descriptions (bookworm main apt index): each package's own free licence (DFSG).",
    "wordnet": "WordNet 3.0 (Debian wordnet-base): WordNet 3.0 licence, Princeton University (permissive).",
    "gcide": "GCIDE, Webster's Revised Unabridged Dictionary 1913 + supplements (Debian dict-gcide): GPL-3+.",
    "python": "Python 3.11 standard library source (the running interpreter's Lib/): PSF License.",
    "bible": "King James Version and World English Bible (Debian sword-text-kjv / sword-text-web): public domain.",
    "golang": "Go 1.19 standard library source (Debian golang-1.19-src): BSD-3-Clause.",
    "faq": "Python FAQ (Debian python3.11-doc, PSF License) and perlfaq (Debian perl-doc, Artistic or GPL).",
    "foldoc": "FOLDOC, Free On-line Dictionary of Computing (Debian dict-foldoc): GFDL.",
}


@dataclasses.dataclass
class TrainSet:
    name: str
    task_type: str
    instruction: str
    in_batch_negatives: bool
    sources: tuple[str, ...]
    records: list[dict]


# ----------------------------------------------------------------------------- raw sources


def run_command(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")


def fetch_sources(cache: Path) -> dict[str, str]:
    """Downloads and unpacks the Debian packages and the apt index into `cache`; returns package versions."""
    debs, unpacked, lists = cache / "debs", cache / "x", cache / "aptlists"
    debs.mkdir(parents=True, exist_ok=True)
    versions = {}
    for package in tqdm(DEB_PACKAGES, desc="debian packages"):
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            run_command(["apt-get", "download", package], debs)
            found = sorted(debs.glob(f"{package}_*.deb"))
        versions[package] = found[-1].name.split("_")[1].replace("%3a", ":")
        target = unpacked / package
        if not target.exists():
            run_command(["dpkg-deb", "-x", str(found[-1]), str(target)], cache)
    if not (lists / f"{APT_LISTS}binary-amd64_Packages").exists():
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        run_command(["apt-get", f"-o=Dir::State::Lists={lists}", "-o=Acquire::Languages=en",
              "-o=Acquire::GzipIndexes=false", "update"], cache)
    release = (lists / "deb.debian.org_debian_dists_bookworm_InRelease").read_text(errors="replace")
    versions["debian-apt-index"] = next((l.split(": ", 1)[1] for l in release.splitlines() if l.startswith("Date:")), "?")
    versions["python-stdlib"] = sys.version.split()[0]
    versions["pysword"] = importlib.metadata.version("pysword")
    versions["rank-bm25"] = importlib.metadata.version("rank-bm25")
    return versions


def cached(cache: Path, name: str, make: Callable[[], list]) -> list:
    """JSON cache of an extractor's records (dataclasses stored as dicts) keyed by name."""
    path = cache / "extracted" / f"{name}.json.gz"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    records = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in make()]
    def write(tmp: str) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            json.dump(records, handle)

    atomic_write(path, write)
    return records


def stable_key(seed: int, text: str) -> str:
    """Deterministic pseudo-random sort key (independent of iteration order)."""
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def sample(items: list, n: int, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def record(query: str, pos: list[str], neg: list[str], prompt: str, task_type: str) -> dict:
    return {"query": query, "pos": pos, "neg": neg, "prompt": prompt, "type": task_type}


def mine(index: Bm25Index, queries: list[str], k: int, exclude: Callable[[int, int], bool], desc: str) -> list[list[int]]:
    out = []
    step = 512
    for start in tqdm(range(0, len(queries), step), desc=f"bm25 {desc}"):
        part = index.search(queries[start : start + step], k, lambda q, d: exclude(start + q, d))
        out.extend(part)
    return out


def retrieval_task(name: str, domain: str, description: str, instruction: str, pairs: list[tuple[str, str]],
                   distractors: list[str], seed: int) -> EvalTask:
    """Retrieval task: `pairs` (query, relevant doc) sampled to EVAL_QUERIES, corpus padded with distractors."""
    pairs = sample(pairs, EVAL_QUERIES, seed)
    corpus_texts = list(dict.fromkeys([doc for _, doc in pairs]))
    seen = set(corpus_texts)
    for doc in sample(distractors, EVAL_CORPUS, seed + 1):
        if len(corpus_texts) >= EVAL_CORPUS:
            break
        if doc not in seen:
            corpus_texts.append(doc)
            seen.add(doc)
    doc_ids = {doc: f"d{i}" for i, doc in enumerate(corpus_texts)}
    queries, qrels = {}, {}
    for i, (query, doc) in enumerate(pairs):
        queries[f"q{i}"] = query
        qrels[f"q{i}"] = {doc_ids[doc]: 1}
    return EvalTask(name=name, type="retrieval", domain=domain, description=description, instruction=instruction,
                    queries=queries, corpus={v: k for k, v in doc_ids.items()}, qrels=qrels)


def labelled_tasks(prefix: str, what: str, items: list[tuple[str, str]], n_labels: int, per_label: int,
                   seed: int, classification: bool = True) -> list[EvalTask]:
    """Classification (half train/half test per label) and clustering tasks over the `n_labels` largest labels."""
    by_label = collections.defaultdict(list)
    for text, label in items:
        by_label[label].append(text)
    labels = sorted(by_label, key=lambda l: (-len(by_label[l]), l))[:n_labels]
    tasks = []
    if classification:
        train_t, train_l, test_t, test_l = [], [], [], []
        for label in labels:
            texts = sample(sorted(by_label[label]), per_label, seed)
            half = len(texts) // 2
            train_t += texts[:half]
            train_l += [label] * half
            test_t += texts[half:]
            test_l += [label] * (len(texts) - half)
        tasks.append(EvalTask(name=f"{prefix}_classification", type="classification", domain="in",
                              description=f"Classify the {what}.", train_texts=train_t, train_labels=train_l,
                              test_texts=test_t, test_labels=test_l))
    texts, labs = [], []
    for label in labels:
        chosen = sample(sorted(by_label[label]), per_label, seed + 7)
        texts += chosen
        labs += [label] * len(chosen)
    order = sample(list(range(len(texts))), len(texts), seed + 9)
    tasks.append(EvalTask(name=f"{prefix}_clustering", type="clustering", domain="in" if classification else "out",
                          description=f"Cluster texts by {what}.", texts=[texts[i] for i in order],
                          labels=[labs[i] for i in order]))
    return tasks


# ----------------------------------------------------------------------------- datasets


def build_debian(cache: Path, seed: int, size: int) -> tuple[list[TrainSet], list[EvalTask]]:
    lists = cache / "aptlists"
    packages = cached(cache, "debian", lambda: debian.read_debian(
        lists / f"{APT_LISTS}binary-amd64_Packages", lists / f"{APT_LISTS}i18n_Translation-en"))
    packages = [debian.DebianPackage(**p) for p in packages]
    # one package per source (prefer the binary named like the source), unique texts only
    by_source = collections.defaultdict(list)
    for p in packages:
        by_source[p.source].append(p)
    chosen, seen_long, seen_short = [], set(), set()
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda p: (p.package != source, p.package))
        p = group[0]
        fl, fs = fingerprint(p.long), fingerprint(p.short)
        if len(p.long.split()) < 8 or len(p.short.split()) < 2 or fl in seen_long or fs in seen_short:
            continue
        seen_long.add(fl)
        seen_short.add(fs)
        chosen.append(p)
    families = sorted({p.family for p in chosen}, key=lambda f: stable_key(seed, f))
    eval_families = set(families[: len(families) // 8])
    train = [p for p in chosen if p.family not in eval_families]
    held = [p for p in chosen if p.family in eval_families]
    logging.info("debian: %d sources, %d train, %d eval", len(chosen), len(train), len(held))

    long_text = lambda p: clip(p.long, MAX_DOC_CHARS)
    docs = [long_text(p) for p in train]
    index = Bm25Index(docs)
    queries_idx = sorted(sample(range(len(train)), size, seed))
    qtexts = [train[i].short for i in queries_idx]
    negs = mine(index, qtexts, NUM_NEG + 2, lambda q, d: d == queries_idx[q] or train[d].family == train[queries_idx[q]].family, "debian")
    instr = "Given a short Debian package summary, retrieve the package's full description"
    desc_records = [record(qtexts[k], [docs[i]], [docs[d] for d in negs[k]], instr, "retrieval")
                    for k, i in enumerate(queries_idx) if len(negs[k]) >= NUM_NEG]

    # Section classification: text -> another text of the same section, negatives from other sections
    class_text = lambda p: clip(f"{p.short}. {p.long}", 500)
    by_section = collections.defaultdict(list)
    for i, p in enumerate(train):
        by_section[p.section].append(i)
    sections = sorted(s for s in by_section if len(by_section[s]) >= 40)
    pool = [i for s in sections for i in by_section[s]]
    ctexts = [class_text(train[i]) for i in pool]
    cindex = Bm25Index(ctexts)
    rng = random.Random(seed + 1)
    picks = sorted(sample(range(len(pool)), size, seed + 2))
    cq = [ctexts[k] for k in picks]
    section_of = [train[i].section for i in pool]
    cnegs = mine(cindex, cq, NUM_NEG + 1, lambda q, d: section_of[d] == section_of[picks[q]], "debian_section")
    members = collections.defaultdict(list)
    for k, s in enumerate(section_of):
        members[s].append(k)
    cinstr = "Given a Debian package description, retrieve a description of another package in the same archive section"
    class_records = []
    for q, k in enumerate(picks):
        others = [m for m in members[section_of[k]] if m != k]
        if not others or len(cnegs[q]) < NUM_NEG:
            continue
        class_records.append(record(ctexts[k], [ctexts[rng.choice(others)]], [ctexts[d] for d in cnegs[q]],
                                    cinstr, "classification"))

    held_pairs = [(p.short, long_text(p)) for p in held]
    tasks = [retrieval_task("debian_desc_retrieval", "in", "Debian short description -> long description (held-out package families).",
                            instr, held_pairs, [long_text(p) for p in held], seed)]
    tasks += labelled_tasks("debian_section", "Debian archive section of a package description",
                            [(class_text(p), p.section) for p in held], 12, 60, seed)
    sets = [TrainSet("debian_desc", "retrieval", instr, True, ("debian",), desc_records),
            TrainSet("debian_section", "classification", cinstr, False, ("debian",), class_records)]
    return sets, tasks


def build_wordnet(cache: Path, seed: int, size: int) -> tuple[list[TrainSet], list[EvalTask]]:
    synsets = [wordnet.Synset(**{**s, "lemmas": tuple(s["lemmas"]), "examples": tuple(s["examples"])})
               for s in cached(cache, "wordnet", lambda: wordnet.read_wordnet(cache / "x/wordnet-base/usr/share/wordnet"))]
    # Evaluation words: the lemmas of a random eighth of the synsets; training synsets share none of them.
    order = sorted(range(len(synsets)), key=lambda i: stable_key(seed, synsets[i].offset))
    eval_ids = set(order[: len(order) // 8])
    eval_words = {l.lower() for i in eval_ids for l in synsets[i].lemmas}
    train_ids = [i for i in range(len(synsets)) if i not in eval_ids and not {l.lower() for l in synsets[i].lemmas} & eval_words]
    gloss_fp = collections.Counter(fingerprint(s.gloss) for s in synsets)
    usable = lambda s: len(s.gloss.split()) >= 3 and gloss_fp[fingerprint(s.gloss)] == 1
    train_syn = [synsets[i] for i in train_ids if usable(synsets[i])]
    eval_syn = [synsets[i] for i in sorted(eval_ids) if usable(synsets[i])]
    logging.info("wordnet: %d train synsets, %d eval synsets", len(train_syn), len(eval_syn))

    def query(s: wordnet.Synset) -> str:
        return f"{s.lemmas[0]}: {s.examples[0]}"

    instr = "Given a word and an example sentence using it, retrieve the definition of the word's sense"
    glosses = [s.gloss for s in train_syn]
    index = Bm25Index(glosses)
    with_ex = [k for k, s in enumerate(train_syn) if s.examples]
    picks = sorted(sample(with_ex, size, seed))
    qtexts = [query(train_syn[k]) for k in picks]
    negs = mine(index, qtexts, NUM_NEG + 1, lambda q, d: d == picks[q], "wordnet")
    records = [record(qtexts[q], [glosses[k]], [glosses[d] for d in negs[q]], instr, "retrieval")
               for q, k in enumerate(picks) if len(negs[q]) >= NUM_NEG]

    tasks = [retrieval_task("wordnet_gloss_retrieval", "in", "WordNet 'lemma: example' -> gloss (held-out words).",
                            instr, [(query(s), s.gloss) for s in eval_syn if s.examples], [s.gloss for s in eval_syn], seed)]
    tasks += labelled_tasks("wordnet_lexname", "WordNet lexicographer class of a gloss",
                            [(s.gloss, s.lexname) for s in eval_syn], 15, 60, seed)

    # WordNet gloss <-> Webster definition pairs for monosemous held-out words
    webster = cached(cache, "gcide", lambda: sorted(gcide.read_gcide(cache / "x/dict-gcide/usr/share/dictd").items()))
    webster = dict(webster)
    senses = collections.Counter(l.lower() for s in synsets for l in s.lemmas)
    pairs = []
    for s in eval_syn:
        for lemma in s.lemmas:
            w = lemma.lower()
            if senses[w] == 1 and w in webster and fingerprint(webster[w]) != fingerprint(s.gloss) \
                    and fingerprint(s.gloss) not in fingerprint(webster[w]):
                pairs.append((w, s.gloss, webster[w]))
                break
    pairs = sample(sorted(pairs), 600, seed)

    # Training: Webster definition -> WordNet gloss for monosemous training words
    winstr = "Given a definition from Webster's 1913 dictionary, retrieve the WordNet gloss of the same word sense"
    train_pairs = []
    for k, s in enumerate(train_syn):
        for lemma in s.lemmas:
            w = lemma.lower()
            if senses[w] == 1 and w in webster and fingerprint(s.gloss) not in fingerprint(webster[w]):
                train_pairs.append((webster[w], k))
                break
    train_pairs = sorted(sample(train_pairs, size, seed + 4), key=lambda p: p[1])
    wnegs = mine(index, [q for q, _ in train_pairs], NUM_NEG + 1, lambda q, d: d == train_pairs[q][1], "webster")
    webster_records = [record(q, [glosses[k]], [glosses[d] for d in wnegs[n]], winstr, "retrieval")
                       for n, (q, k) in enumerate(train_pairs) if len(wnegs[n]) >= NUM_NEG]
    half = len(pairs) // 2
    positives = pairs[:half]
    negatives_src = pairs[half:]
    widx = Bm25Index([p[2] for p in negatives_src])
    near = widx.search([p[1] for p in negatives_src], 1, lambda q, d: d == q)
    t1, t2, labels = [], [], []
    for _, gloss, web in positives:
        t1.append(gloss); t2.append(web); labels.append(1)
    for q, (_, gloss, _) in enumerate(negatives_src):
        if near[q]:
            t1.append(gloss); t2.append(negatives_src[near[q][0]][2]); labels.append(0)
    order = sample(list(range(len(t1))), len(t1), seed + 3)
    tasks.append(EvalTask(name="wordnet_webster_pairs", type="pair_classification", domain="in",
                          description="Is the WordNet gloss and the Webster 1913 definition the same word sense? (held-out words)",
                          texts1=[t1[i] for i in order], texts2=[t2[i] for i in order], labels=[labels[i] for i in order]))
    return [TrainSet("wordnet_gloss", "retrieval", instr, True, ("wordnet",), records),
            TrainSet("webster_wordnet", "retrieval", winstr, True, ("gcide", "wordnet"), webster_records)], tasks


def _first_paragraph(doc: str) -> str:
    return clip(squash(doc.split("\n\n")[0]), 400)


def build_python(cache: Path, seed: int, size: int) -> tuple[list[TrainSet], list[EvalTask]]:
    funcs = cached(cache, f"python{sys.version_info[0]}.{sys.version_info[1]}", lambda: python_lib.read_python_functions())
    count = collections.Counter(fingerprint(f["docstring"]) for f in funcs)
    code_count = collections.Counter(fingerprint(f["code"]) for f in funcs)
    funcs = [f for f in funcs if count[fingerprint(f["docstring"])] == 1 and code_count[fingerprint(f["code"])] == 1]
    top = lambda f: f["module"].split(".")[0]
    modules = sorted({top(f) for f in funcs}, key=lambda m: stable_key(seed, m))
    eval_modules, n = set(), 0
    for m in modules:  # about 20% of functions, whole top-level modules
        if n >= len(funcs) // 5:
            break
        eval_modules.add(m)
        n += sum(1 for f in funcs if top(f) == m)
    train = [f for f in funcs if top(f) not in eval_modules]
    held = [f for f in funcs if top(f) in eval_modules]
    logging.info("python: %d train, %d eval functions", len(train), len(held))
    code = lambda f: clip(f["code"], MAX_DOC_CHARS)
    docs = [code(f) for f in train]
    index = Bm25Index(docs)
    picks = sorted(sample(range(len(train)), size, seed))
    qtexts = [_first_paragraph(train[k]["docstring"]) for k in picks]
    bm = mine(index, qtexts, NUM_NEG + 2, lambda q, d: d == picks[q], "python")
    instr = "Given a Python docstring, retrieve the function it documents"
    records = []
    for q, k in enumerate(picks):
        near = [j for j in (k - 1, k + 1) if 0 <= j < len(train) and train[j]["module"] == train[k]["module"]]
        negs = list(dict.fromkeys([docs[j] for j in near] + [docs[d] for d in bm[q]]))[: NUM_NEG + 1]
        negs = [n_ for n_ in negs if n_ != docs[k]]
        if len(negs) >= NUM_NEG:
            records.append(record(qtexts[q], [docs[k]], negs, instr, "retrieval"))
    tasks = [retrieval_task("python_code_retrieval", "in", "Python docstring -> function (held-out stdlib modules).", instr,
                            [(_first_paragraph(f["docstring"]), code(f)) for f in held], [code(f) for f in held], seed)]
    return [TrainSet("python_code", "retrieval", instr, True, ("python",), records)], tasks


def build_bible(cache: Path, seed: int, size: int) -> tuple[list[TrainSet], list[EvalTask]]:
    kjv = cached(cache, "bible_kjv", lambda: bible.read_bible(cache / "x/sword-text-kjv/usr/share/sword", "engKJV2006eb"))
    web = cached(cache, "bible_web", lambda: bible.read_bible(cache / "x/sword-text-web/usr/share/sword", "engWEB2015eb"))
    key = lambda v: (v["book"], v["chapter"], v["verse"])
    web_by = {key(v): v for v in web}
    aligned = [(v, web_by[key(v)]) for v in kjv if key(v) in web_by
               and fingerprint(v["text"]) != fingerprint(web_by[key(v)]["text"]) and len(v["text"].split()) >= 4]
    fp = collections.Counter(fingerprint(a["text"]) for a, _ in aligned) + collections.Counter(fingerprint(b["text"]) for _, b in aligned)
    aligned = [(a, b) for a, b in aligned if fp[fingerprint(a["text"])] == 1 and fp[fingerprint(b["text"])] == 1]
    train = [p for p in aligned if p[0]["testament"] == "ot"]
    held = [p for p in aligned if p[0]["testament"] == "nt"]
    logging.info("bible: %d OT pairs (train), %d NT pairs (eval)", len(train), len(held))
    instr = "Retrieve the Bible verse that says the same thing in another English translation"
    picks = sorted(sample(range(len(train)), size, seed))
    records = []
    for n, k in enumerate(picks):
        direction = n % 2  # symmetric: half KJV -> WEB, half WEB -> KJV
        src, tgt = train[k][direction]["text"], train[k][1 - direction]["text"]
        near = [train[j][1 - direction]["text"] for j in (k + 1, k - 1, k + 2, k - 2)
                if 0 <= j < len(train) and train[j][0]["book"] == train[k][0]["book"]]
        if len(near) >= NUM_NEG:
            records.append(record(src, [tgt], near[:NUM_NEG + 1], instr, "sts"))
    # Evaluation keeps the freer renderings (word Jaccard < 0.4; the rest is near-trivial for BM25) and puts
    # the neighbouring verses of every target into the corpus as distractors.
    def jaccard(a: str, b: str) -> float:
        x, y = set(words(a)), set(words(b))
        return len(x & y) / max(1, len(x | y))

    hard = sample([k for k, (a, b) in enumerate(held) if jaccard(a["text"], b["text"]) < 0.4], EVAL_QUERIES, seed)
    neighbours = [held[j][1]["text"] for k in hard for j in (k - 2, k - 1, k + 1, k + 2)
                  if 0 <= j < len(held) and held[j][0]["book"] == held[k][0]["book"]]
    others = sample([b["text"] for _, b in held], EVAL_CORPUS, seed + 5)
    tasks = [retrieval_task("bible_paraphrase_retrieval", "in",
                            "KJV verse -> World English Bible verse, freer renderings only, neighbouring verses as "
                            "distractors (New Testament; training uses the Old).",
                            instr, [(held[k][0]["text"], held[k][1]["text"]) for k in hard],
                            list(dict.fromkeys(neighbours)) + others, seed)]
    return [TrainSet("bible_paraphrase", "sts", instr, True, ("bible",), records)], tasks


def build_out_of_domain(cache: Path, seed: int) -> list[EvalTask]:
    go = cached(cache, "golang", lambda: golang.read_go_functions(cache / "x/golang-1.19-src/usr/share/go-1.19/src"))
    count = collections.Counter(fingerprint(f["doc"]) for f in go)
    go = [f for f in go if count[fingerprint(f["doc"])] == 1]
    go_pairs = [(clip(f["doc"], 400), clip(f["code"], MAX_DOC_CHARS)) for f in go]
    tasks = [retrieval_task("go_code_retrieval", "out", "Go doc comment -> function (Go 1.19 standard library).",
                            "Given a Go doc comment, retrieve the function it documents", go_pairs, [c for _, c in go_pairs], seed)]
    x = cache / "x"
    entries = faq.read_python_faq(x / "python3.11-doc/usr/share/doc/python3.11/html/_sources/faq") + \
        faq.read_perlfaq(x / "perl-doc/usr/share/perl/5.36.0/pod")
    qa = list(dict((e.question, (e.question, clip(e.answer, MAX_DOC_CHARS))) for e in entries).values())
    tasks.append(retrieval_task("tech_faq_retrieval", "out", "Programming FAQ question -> answer (Python FAQ, perlfaq).",
                                "Given a programming question, retrieve the FAQ answer", qa, [a for _, a in qa], seed))
    fold = cached(cache, "foldoc", lambda: foldoc.read_foldoc(x / "dict-foldoc/usr/share/dictd"))
    items = [(clip(e["definition"], 500), e["category"]) for e in fold if e["category"]]
    tasks += labelled_tasks("foldoc_category", "FOLDOC computing-dictionary category", items, 10, 80, seed, classification=False)
    return tasks


# ----------------------------------------------------------------------------- leakage and output


def eval_texts(task: EvalTask) -> list[str]:
    return (list(task.queries.values()) + list(task.corpus.values()) + task.train_texts + task.test_texts
            + task.texts + task.texts1 + task.texts2)


NEAR_DUP_COVERAGE = 0.5


def remove_leaks(task: EvalTask, train_fps: set[str], near: NearDuplicateIndex) -> tuple[EvalTask, int]:
    """Drops every evaluation text equal (after normalization) to a training text, or half covered by the word
    4-grams of one training text; returns the task and the number of texts dropped."""
    leak = lambda t: fingerprint(t) in train_fps or near.covered(t) >= NEAR_DUP_COVERAGE
    dropped = sum(1 for t in eval_texts(task) if leak(t))
    if task.type == "retrieval":
        corpus = {k: v for k, v in task.corpus.items() if not leak(v)}
        qrels = {q: {d: r for d, r in rel.items() if d in corpus} for q, rel in task.qrels.items() if not leak(task.queries[q])}
        qrels = {q: rel for q, rel in qrels.items() if rel}
        task = dataclasses.replace(task, corpus=corpus, qrels=qrels, queries={q: task.queries[q] for q in qrels})
    elif task.type == "classification":
        keep_tr = [i for i, t in enumerate(task.train_texts) if not leak(t)]
        keep_te = [i for i, t in enumerate(task.test_texts) if not leak(t)]
        task = dataclasses.replace(task, train_texts=[task.train_texts[i] for i in keep_tr],
                                   train_labels=[task.train_labels[i] for i in keep_tr],
                                   test_texts=[task.test_texts[i] for i in keep_te],
                                   test_labels=[task.test_labels[i] for i in keep_te])
    elif task.type == "clustering":
        keep = [i for i, t in enumerate(task.texts) if not leak(t)]
        task = dataclasses.replace(task, texts=[task.texts[i] for i in keep], labels=[task.labels[i] for i in keep])
    else:
        keep = [i for i in range(len(task.texts1)) if not leak(task.texts1[i]) and not leak(task.texts2[i])]
        task = dataclasses.replace(task, texts1=[task.texts1[i] for i in keep], texts2=[task.texts2[i] for i in keep],
                                   labels=[task.labels[i] for i in keep])
    return task, dropped


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_gzip(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write(text.encode("utf-8"))


def task_counts(task: EvalTask) -> dict:
    if task.type == "retrieval":
        return {"queries": len(task.queries), "corpus": len(task.corpus)}
    if task.type == "classification":
        return {"train": len(task.train_texts), "test": len(task.test_texts), "labels": len(set(task.test_labels))}
    if task.type == "clustering":
        return {"texts": len(task.texts), "labels": len(set(task.labels))}
    return {"pairs": len(task.texts1), "positives": sum(task.labels)}


def bm25_ndcg_at_10(task: EvalTask) -> float:
    """nDCG@10 of plain BM25 on a retrieval task: the lexical baseline to report beside model scores."""
    doc_ids = list(task.corpus)
    index = Bm25Index([task.corpus[d] for d in doc_ids])
    query_ids = list(task.queries)
    ranked = index.search([task.queries[q] for q in query_ids], 10, lambda q, d: False)
    total = 0.0
    for q, docs in zip(query_ids, ranked):
        rel = task.qrels[q]
        dcg = sum(rel.get(doc_ids[d], 0) / math.log2(r + 2) for r, d in enumerate(docs))
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        total += dcg / ideal if ideal else 0.0
    return round(total / len(query_ids), 4)


def write_corpus(out: Path, sets: list[TrainSet], tasks: list[EvalTask], versions: dict, seed: int,
                 baselines: dict[str, float]) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_folder(out))
    (tmp / "train").mkdir()
    (tmp / "eval").mkdir()
    manifest = {"format": 1, "seed": seed, "source_versions": versions, "python": sys.version.split()[0],
                "train": {}, "eval": {}}
    for s in sets:
        path = tmp / "train" / f"{s.name}.jsonl.gz"
        write_gzip(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in s.records))
        manifest["train"][s.name] = {
            "file": f"train/{s.name}.jsonl.gz", "task_type": s.task_type, "instruction": s.instruction,
            "in_batch_negatives": s.in_batch_negatives, "count": len(s.records), "sources": list(s.sources),
            "min_negatives": min(len(r["neg"]) for r in s.records), "sha256": sha256_of(path),
        }
    for t in tasks:
        path = tmp / "eval" / f"{t.name}.json.gz"
        write_gzip(path, json.dumps(t.to_dict(), ensure_ascii=False, sort_keys=True))
        manifest["eval"][t.name] = {"file": f"eval/{t.name}.json.gz", "type": t.type, "domain": t.domain,
                                    "counts": task_counts(t), "sha256": sha256_of(path)}
        if t.name in baselines:
            manifest["eval"][t.name]["bm25_ndcg_at_10"] = baselines[t.name]
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sources = sorted({src for s in sets for src in s.sources} | {"gcide", "golang", "faq", "foldoc"})
    notice = ["boom_jax built-in corpus: text extracted from freely licensed sources that ship offline.",
              "Each file keeps the licence of the source it came from:", ""]
    notice += [f"- {src}: {LICENCES[src]}" for src in sources]
    notice += ["", "Source package versions are listed in manifest.json (source_versions).",
               "Rebuild: python -m boom_jax.data.build_builtin --out=boom_jax/data/builtin", ""]
    (tmp / "NOTICE").write_text("\n".join(notice))
    publish_folder(tmp, out, overwrite=True)
    return manifest


def build(out: Path, cache: Path, seed: int, size: int) -> dict:
    start = time.time()
    cache = Path(cache)
    versions = fetch_sources(cache)
    sets, tasks = [], []
    for builder in (build_debian, build_wordnet, build_python, build_bible):
        s, t = builder(cache, seed, size)
        sets += s
        tasks += t
    tasks += build_out_of_domain(cache, seed)
    train_texts = sorted({x for s in sets for r in s.records for x in [r["query"], *r["pos"], *r["neg"]]})
    train_fps = {fingerprint(x) for x in train_texts}
    near = NearDuplicateIndex(train_texts)
    clean, baselines = [], {}
    for task in tqdm(tasks, desc="leakage check"):
        task, dropped = remove_leaks(task, train_fps, near)
        logging.info("%s: dropped %d leaked or near-duplicate texts", task.name, dropped)
        clean.append(task)
        if task.type == "retrieval":
            baselines[task.name] = bm25_ndcg_at_10(task)
    manifest = write_corpus(Path(out), sets, clean, versions, seed, baselines)
    logging.info("built %s in %.0f s", out, time.time() - start)
    return manifest


def main(argv: list[str]) -> None:
    del argv
    manifest = build(Path(FLAGS.out), Path(FLAGS.cache), FLAGS.seed, FLAGS.train_size)
    for name, info in manifest["train"].items():
        print(f"train {name:20s} {info['count']:6d} examples  {info['task_type']}")
    for name, info in manifest["eval"].items():
        print(f"eval  {name:32s} {info['domain']:3s} {info['type']:20s} {info['counts']}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

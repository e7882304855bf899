"""The extra out-of-domain dev tasks (boom_jax.data.build_ood): committed files, leakage, extractors."""

import hashlib

import pytest

from boom_jax.data import build_builtin, build_ood, builtin
from boom_jax.data.extract import fortunes, handbook, manpages
from boom_jax.data.extract.near_dup import NearDuplicateIndex
from boom_jax.data.extract.text import fingerprint

NEW_TASKS = tuple(build_ood.TASK_LICENCES)
TYPES = {"manpage_summary_retrieval": "retrieval", "handbook_section_retrieval": "retrieval",
         "fortune_topic_classification": "classification", "fortune_topic_clustering": "clustering"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return builtin.builtin_manifest()


@pytest.fixture(scope="module")
def tasks() -> dict:
    return {t.name: t for t in builtin.builtin_eval_tasks(names=list(NEW_TASKS))}


def test_new_tasks_are_out_of_domain_builtins_with_declared_counts(manifest, tasks):
    assert set(TYPES) == set(NEW_TASKS)
    out_names = {t.name for t in builtin.builtin_eval_tasks(domain="out")}
    assert set(NEW_TASKS) <= out_names  # what --tasks=builtin_out runs
    for name, task in tasks.items():
        info = manifest["eval"][name]
        assert (task.type, task.domain, info["type"], info["domain"]) == (TYPES[name], "out", TYPES[name], "out")
        assert info["counts"] == build_builtin.task_counts(task)
        digest = hashlib.sha256((builtin.BUILTIN_DIR / info["file"]).read_bytes()).hexdigest()
        assert digest == info["sha256"]
        if task.type == "retrieval":
            assert 200 <= len(task.queries) <= 250 and 800 <= len(task.corpus) <= 1500
            assert set(task.qrels) == set(task.queries)
            assert all(len(rel) == 1 and set(rel) <= set(task.corpus) for rel in task.qrels.values())
            assert len(set(task.queries.values())) == len(task.queries)  # no ambiguous query
            assert 0.3 < info["bm25_ndcg_at_10"] < 0.9
        elif task.type == "classification":
            assert info["counts"]["labels"] == len(build_ood.FORTUNE_TOPICS) == len(set(task.train_labels))
            assert len(task.train_texts) >= 300 and len(task.test_texts) >= 300
        else:
            assert len(task.texts) >= 600 and len(set(task.labels)) == len(build_ood.FORTUNE_TOPICS)
    for src in ("manpages", "handbook", "fortunes"):
        assert build_ood.LICENCES[src] in (builtin.BUILTIN_DIR / "NOTICE").read_text()
    assert {"manpages", "manpages-dev", "fortunes", "debian-handbook"} <= set(manifest["source_versions"])


def test_no_new_eval_text_duplicates_training_text(tasks):
    train = build_ood.training_texts(builtin.BUILTIN_DIR)
    train_fps = {fingerprint(t) for t in train}
    near = NearDuplicateIndex(train)
    for task in tasks.values():
        texts = build_builtin.eval_texts(task)
        assert not [t for t in texts if fingerprint(t) in train_fps], task.name
        close = [t for t in texts if near.covered(t) >= build_builtin.NEAR_DUP_COVERAGE]
        assert not close, f"{task.name}: {len(close)} near-duplicates of training text, e.g. {close[0][:80]!r}"


def test_manpage_sections_from_rendered_page():
    roff = (b'.TH hsearch 3 2022-12-15 "Linux man-pages 6.03"\n.SH NAME\nhcreate, hsearch \\- hash table management\n'
            b".SH DESCRIPTION\nThe\n.BR hsearch ()\nfunction searches\nthe table.\n.PP\nSecond paragraph.\n"
            b".SH SEE ALSO\n.BR bsearch (3)\n")
    parts = manpages.sections(manpages.render(roff))
    assert parts["NAME"] == "hcreate, hsearch - hash table management"
    assert parts["DESCRIPTION"] == "The hsearch() function searches the table. Second paragraph."
    assert parts["SEE ALSO"] == "bsearch(3)"


def test_fortunes_split_on_percent_lines_and_drop_overstrike(tmp_path):
    (tmp_path / "food").write_text("An apple a day.\n\t-- Proverb\n%\nB\bBo\bol\bld  soup\n%\n")
    assert fortunes.read_fortunes(tmp_path, ("food",)) == [
        fortunes.Fortune("food", "An apple a day. -- Proverb"), fortunes.Fortune("food", "Bold soup")]


def test_handbook_units_keep_own_prose_only(tmp_path):
    page = tmp_path / "sect.x.html"
    page.write_text(
        '<html><body><div class="section"><h2 class="title"><a id="a"></a>6.2. APT <code>apt</code> Commands</h2>'
        '<div class="para">Top prose.</div><pre class="screen">$ apt update</pre>'
        '<div class="section"><h3 class="title">6.2.1. Initialization</h3><div class="para">Update the lists.</div>'
        '<div class="sidebar"><p class="title"><strong><span class="emphasis"><em>TIP</em></span> Incremental '
        'updates</strong></p><div class="para">Diffs save time.</div></div><div class="para">More.</div></div>'
        '</div></body></html>')
    units = handbook.read_handbook_page(page)
    assert [(u.kind, u.parent, u.title, u.text) for u in units] == [
        ("section", "", "APT apt Commands", "Top prose."),
        ("section", "APT apt Commands", "Initialization", "Update the lists. More."),
        ("TIP", "Initialization", "Incremental updates", "Diffs save time."),
    ]


def test_notice_block_is_replaced_not_repeated():
    once = build_ood.notice_text("corpus notice\n")
    assert once.startswith("corpus notice\n\n" + build_ood.NOTICE_HEADER)
    assert build_ood.notice_text(once) == once


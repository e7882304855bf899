"""Cluster-level merging: interactions and clustering against hand-computed values, held-out dev
slices, and a whole tiny run (probes, clusters, merge, export, resume)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from boom_jax.boom.clusters import (cluster_datasets, cluster_linkage, dev_split,
                                    interaction_distance, interaction_matrix, run_cluster_merge)
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.sampling import SubsetManifest
from boom_jax.errors import ConfigError
from tests.helpers_logs import captured_logs

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import cluster_merge  # noqa: E402

EPS = 1e-6


def tiny_config():
    return cluster_merge.get_config("tiny")


# ---- interactions and clustering ------------------------------------------------------------------

def test_interaction_matrix_is_mean_of_joint_minus_separate():
    separate = {"a": 1.0, "b": 2.0, "c": 3.0}
    joint = {("a", "b"): {"a": 0.8, "b": 1.9}, ("a", "c"): {"a": 1.2, "c": 3.4},
             ("c", "b"): {"b": 2.1, "c": 2.9}}  # either key order is accepted
    names, m = interaction_matrix(separate, joint)
    assert names == ["a", "b", "c"]
    expected = np.array([[0.0, -0.15, 0.3], [-0.15, 0.0, 0.0], [0.3, 0.0, 0.0]])
    np.testing.assert_allclose(m, expected, atol=1e-12)
    with pytest.raises(ValueError, match=r"no joint losses for the pair \('b', 'c'\)"):
        interaction_matrix(separate, {k: v for k, v in joint.items() if k != ("c", "b")})
    with pytest.raises(ValueError, match=r"lack \['b'\]"):
        interaction_matrix(separate, {**joint, ("a", "b"): {"a": 0.8}})


def test_linkage_and_cuts_match_hand_computed_values():
    names = ["a", "b", "c"]
    m = np.array([[0.0, -0.15, 0.3], [-0.15, 0.0, 0.0], [0.3, 0.0, 0.0]])
    # distances = interaction - min (-0.15) + eps: ab = eps, ac = 0.45 + eps, bc = 0.15 + eps
    np.testing.assert_allclose(interaction_distance(m), [EPS, 0.45 + EPS, 0.15 + EPS], atol=1e-12)
    z = cluster_linkage(names, m, "average")  # c joins {a, b} at the mean of 0.45 and 0.15
    np.testing.assert_allclose(z, [[0, 1, EPS, 2], [2, 3, 0.3 + EPS, 3]], atol=1e-12)
    z = cluster_linkage(names, m, "complete")
    np.testing.assert_allclose(z, [[0, 1, EPS, 2], [2, 3, 0.45 + EPS, 3]], atol=1e-12)
    # average linkage joins c at an interaction of 0.3 - 0.15 = 0.15
    assert cluster_datasets(names, m, threshold=0.1) == [["a", "b"], ["c"]]
    assert cluster_datasets(names, m, threshold=0.2) == [["a", "b", "c"]]
    assert cluster_datasets(names, m, threshold=-0.2) == [["a"], ["b"], ["c"]]
    assert cluster_datasets(names, m, num_clusters=2) == [["a", "b"], ["c"]]


def test_block_structured_interactions_give_the_blocks_in_input_order():
    names = ["e", "a", "c", "b", "d"]
    blocks = {"e": 0, "c": 0, "a": 1, "b": 1, "d": 1}
    rng = np.random.default_rng(0)
    m = np.zeros((5, 5))
    for i in range(5):
        for j in range(i + 1, 5):
            same = blocks[names[i]] == blocks[names[j]]
            m[i, j] = m[j, i] = (-1.0 if same else 1.0) + 0.05 * rng.standard_normal()
    for method in ("average", "single", "complete", "weighted"):
        assert cluster_datasets(names, m, num_clusters=2, method=method) == [["e", "c"], ["a", "b", "d"]]
    assert cluster_datasets(names, m, threshold=0.0) == [["e", "c"], ["a", "b", "d"]]
    assert cluster_datasets(names, m, num_clusters=1) == [names]
    assert cluster_datasets(names, m, num_clusters=5) == [[n] for n in names]
    assert cluster_datasets(["x"], np.zeros((1, 1)), num_clusters=1) == [["x"]]


def test_clustering_rejects_bad_input():
    m = np.array([[0.0, 1.0], [0.5, 0.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        cluster_datasets(["a", "b"], m, num_clusters=1)
    with pytest.raises(ValueError, match="ward need Euclidean"):
        cluster_datasets(["a", "b"], np.zeros((2, 2)), num_clusters=1, method="ward")
    with pytest.raises(ValueError, match="exactly one of num_clusters and threshold"):
        cluster_datasets(["a", "b"], np.zeros((2, 2)), num_clusters=1, threshold=0.0)
    with pytest.raises(ValueError, match=r"num_clusters=3 must be in \[1, 2\]"):
        cluster_datasets(["a", "b"], np.zeros((2, 2)), num_clusters=3)
    with pytest.raises(ValueError, match="does not match 3 names"):
        cluster_datasets(["a", "b", "c"], np.zeros((2, 2)), num_clusters=1)


# ---- held-out dev slices --------------------------------------------------------------------------

def test_dev_split_holds_out_a_seeded_disjoint_slice():
    datasets = builtin_train_datasets(names=["debian_desc", "wordnet_gloss"], limit=30)
    split = dev_split(datasets, 8, seed=0)
    for d in datasets:
        train, dev = split.train[d.name], split.dev[d.name]
        assert len(dev) == 8 and len(train) == 22
        assert not set(train) & set(dev) and sorted(train + dev) == list(range(30))
        dev_set = split.dev_datasets([d])[0]
        assert [e.index for e in dev_set.examples] == dev
    manifest = split.train_manifest(["wordnet_gloss"])
    assert list(manifest.indices) == ["wordnet_gloss"]
    assert [len(d.examples) for d in manifest.apply(datasets[1:])] == [22]
    assert dev_split(datasets, 8, seed=0) == split
    assert dev_split(datasets, 8, seed=1).dev != split.dev
    with pytest.raises(ConfigError, match=r"config.cluster.dev_examples=25 leaves fewer than 8"):
        dev_split(datasets, 25, seed=0, min_train=8)


def test_bad_cluster_section_stops_the_train_command_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "boom_jax.train", "--config=configs/cluster_merge.py:tiny",
         "--config.cluster.linkage=ward", f"--workdir={tmp_path}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error: config.cluster.linkage='ward'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "probes").exists()


# ---- a whole tiny run -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """The tiny cluster workflow through the train command (one CPU device, a fresh persistent
    compilation cache so the probes after the first reuse its compiled step), then run_cluster_merge
    again in this process (which must train nothing)."""
    workdir = tmp_path_factory.mktemp("clusters")
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")))
    proc = subprocess.run([sys.executable, "-m", "boom_jax.train", "--config=configs/cluster_merge.py:tiny",
                           f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((workdir / "clusters.json").read_text())
    records = sorted(workdir.glob("*/*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records if p.name in ("probe.json", "cluster.json")}
    with captured_logs() as messages:
        again = run_cluster_merge(tiny_config(), str(workdir))
    return workdir, report, again, stamps, "\n".join(messages)


def test_run_writes_interactions_clusters_and_plots(cluster_run):
    workdir, report, *_ = cluster_run
    names = ["debian_desc", "debian_section", "wordnet_gloss"]
    saved = json.loads((workdir / "clusters.json").read_text())
    assert saved["datasets"] == names
    assert sorted(n for g in saved["clusters"] for n in g) == sorted(names) and len(saved["clusters"]) == 2
    # the matrix is recomputed from the probes' own dev losses
    probes = {p.parent.name: json.loads(p.read_text()) for p in (workdir / "probes").glob("*/probe.json")}
    assert len(probes) == 6
    separate = {n: probes[n]["dev_loss"][n] for n in names}
    joint = {tuple(k.split("+")): v["dev_loss"] for k, v in probes.items() if "+" in k}
    np.testing.assert_allclose(saved["interaction"], interaction_matrix(separate, joint)[1], atol=1e-12)
    assert saved["clusters"] == cluster_datasets(names, np.array(saved["interaction"]), num_clusters=2)
    assert {k: probes[k]["steps"] for k in probes} == {k: 1 if "+" not in k else 2 for k in probes}
    assert (workdir / "interaction.png").stat().st_size > 1000
    summary = (workdir / "summary.md").read_text()
    assert all(f"c{k}: {', '.join(g)}" in summary for k, g in enumerate(saved["clusters"]))
    assert set(saved["dev_loss"]) == {"base", "c0", "c1", "merged"}
    assert all(np.isfinite(v) for v in saved["dev_loss"]["merged"].values())


def test_no_probe_or_cluster_model_trains_on_dev_examples(cluster_run):
    workdir, *_ = cluster_run
    dev = {k: set(v) for k, v in json.loads((workdir / "clusters.json").read_text())["dev"]["indices"].items()}
    manifests = list(workdir.glob("probes/*/subset_manifest.json")) + list(workdir.glob("clusters/*/subset_manifest.json"))
    assert len(manifests) == 8
    for path in manifests:
        manifest = SubsetManifest.load(str(path))
        for name, indices in manifest.indices.items():
            assert not set(indices) & dev[name], path
            assert len(indices) + len(dev[name]) == manifest.sizes[name]


def test_merged_model_is_the_multislerp_of_the_cluster_models_and_exports(cluster_run):
    import jax
    from sentence_transformers import SentenceTransformer

    from boom_jax.encode import load_encoder
    from boom_jax.merging.methods import MERGE_METHODS
    from boom_jax.model_io import load_model

    workdir, *_ = cluster_run
    members = [load_model(str(workdir / "clusters" / c / "model"))[1] for c in ("c0", "c1")]
    merged = load_model(str(workdir / "merged"))[1]
    expected = MERGE_METHODS["multislerp"](members)
    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(merged)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    texts = ["a package that compresses files", "lemma: run"]
    ours = load_encoder(str(workdir / "merged")).encode(texts)
    theirs = SentenceTransformer(str(workdir / "export"), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_rerun_skips_finished_probes_and_cluster_models(cluster_run):
    workdir, report, again, stamps, output = cluster_run
    assert len(stamps) == 8
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert output.count("already finished") == 8, output
    assert "[cluster] training" not in output
    assert again["interaction"] == report["interaction"] and again["clusters"] == report["clusters"]
    assert again["dev_loss"] == report["dev_loss"]


def test_dev_loss_matches_a_numpy_infonce_over_the_batcher_groups():
    import jax

    from boom_jax.boom.clusters import dev_loss
    from boom_jax.data.batcher import Batcher
    from boom_jax.models.encoder import jitted_forward
    from boom_jax.tokenization import TextTokenizer, load_tokenizer
    from boom_jax.training.model_setup import load_model_for_training

    config = tiny_config()
    cfg, params, tokenizer_dir = load_model_for_training(config, jax.random.PRNGKey(0))
    params = jax.device_get(params)
    datasets = builtin_train_datasets(names=["debian_desc", "debian_section"], limit=24)
    assert [d.in_batch_negatives for d in datasets] == [True, False]
    dev_sets = dev_split(datasets, 8, seed=0).dev_datasets(datasets)
    losses = dev_loss(config, cfg, params, tokenizer_dir, dev_sets, batch_size=4)

    tokenizer = load_tokenizer(tokenizer_dir)
    forward = jitted_forward(cfg)
    for d in dev_sets:
        # config.model.query_prompt_template "" means no query instruction, in training and here alike
        d = dataclasses.replace(d, examples=[dataclasses.replace(e, prompt="") for e in d.examples])
        batcher = Batcher([d], TextTokenizer(tokenizer, 32, buckets=(32,)), TextTokenizer(tokenizer, 32, buckets=(32,)),
                          4, group_size=config.data.train_group_size, seed=config.seed, token_cache_size=0,
                          show_progress=False)
        per_batch = []
        for batch in batcher:
            q = np.asarray(forward(params, batch["query_ids"], batch["query_mask"]), np.float64)
            p = np.asarray(forward(params, batch["passage_ids"], batch["passage_mask"]), np.float64)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            p /= np.linalg.norm(p, axis=1, keepdims=True)
            g = len(p) // len(q)
            scores = q @ p.T / config.train.temperature
            terms = []
            for i in range(len(q)):
                row = scores[i] if d.in_batch_negatives else scores[i, i * g:(i + 1) * g]
                label = i * g if d.in_batch_negatives else 0
                terms.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[label])
            per_batch.append(np.mean(terms))
        assert len(per_batch) == 2
        np.testing.assert_allclose(losses[d.name], np.mean(per_batch), rtol=1e-5)


def test_more_clusters_than_datasets_is_refused_before_training(tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.cluster.num_clusters = 4
    with pytest.raises(ConfigError, match=r"config.cluster.num_clusters=4 exceeds the 3 datasets"):
        run_cluster_merge(config, str(tmp_path))
    assert not (tmp_path / "probes").exists()

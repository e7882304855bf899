"""A whole BOOM bag on a tiny model: subsets as the ratios say, kill and resume, merge, export."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from boom_jax.boom.bag import bag_members, member_subset, run_bag
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.sampling import SubsetManifest
from boom_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import bag as bag_config  # noqa: E402


def tiny_config():
    return bag_config.get_config("tiny")


def _wait_for(predicate, proc, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def killed_then_resumed_bag(tmp_path_factory):
    """The bag command killed (SIGKILL) during its second member, then run again to the end."""
    workdir = tmp_path_factory.mktemp("bag")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "boom_jax.train", "--config=configs/bag.py:tiny", f"--workdir={workdir}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    second = workdir / "members" / "r100" / "checkpoints"
    first_done = workdir / "members" / "r050" / "member.json"
    try:
        reached = _wait_for(lambda: first_done.exists() and second.is_dir()
                            and any((p / "commit_success.txt").exists() or (p / "_CHECKPOINT_METADATA").exists()
                                    for p in second.iterdir() if p.name.isdigit()), proc)
        output = b""
        if not reached:
            output = proc.communicate(timeout=5)[0] if proc.poll() is not None else b""
        assert reached, "the bag never reached its second member's first checkpoint:\n" + output.decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (workdir / "members" / "r100" / "member.json").exists(), "killed too late: the member finished"
    first_record = first_done.read_text()
    first_mtime = first_done.stat().st_mtime_ns

    config = tiny_config()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        summary = run_bag(config, str(workdir))
    finally:
        logging.getLogger().removeHandler(handler)
    messages = [r.getMessage() for r in records]
    return workdir, summary, messages, first_record, first_mtime


def test_members_see_the_subsets_their_ratios_say(killed_then_resumed_bag):
    workdir, summary, *_ = killed_then_resumed_bag
    datasets = builtin_train_datasets(limit=tiny_config().data.limit)
    members = bag_members(tiny_config().bag)
    manifests = {}
    for m in members:
        saved = SubsetManifest.load(str(workdir / "members" / m.name / "subset_manifest.json"))
        expected = member_subset(datasets, m, "without_replacement")
        assert saved.indices == expected.indices
        for d in datasets:
            assert len(saved.indices[d.name]) == round(m.ratio * len(d))
            assert len(set(saved.indices[d.name])) == len(saved.indices[d.name])
        manifests[m.name] = saved
    assert manifests["r050"].indices != manifests["r100"].indices
    steps = {r["name"]: r["steps"] for r in summary["members"]}
    assert steps["r050"] * 2 == steps["r100"], "a half-size member runs half the steps"


def test_killed_bag_resumes_instead_of_restarting(killed_then_resumed_bag):
    workdir, _, messages, first_record, first_mtime = killed_then_resumed_bag
    first = workdir / "members" / "r050" / "member.json"
    assert first.read_text() == first_record and first.stat().st_mtime_ns == first_mtime
    assert any(m.startswith("resumed from step") for m in messages), messages


def test_merged_model_is_the_multislerp_of_the_members_and_exports(killed_then_resumed_bag):
    from sentence_transformers import SentenceTransformer

    from boom_jax.merging.methods import MERGE_METHODS
    from boom_jax.model_io import load_model
    from boom_jax.encode import load_encoder

    workdir, summary, *_ = killed_then_resumed_bag
    members = [load_model(str(workdir / "members" / n / "model"))[1] for n in ("r050", "r100")]
    cfg, merged, tok = load_model(str(workdir / "merged"))
    expected = MERGE_METHODS["multislerp"](members)
    import jax

    for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(merged)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

    texts = ["a package that compresses files", "lemma: run. He ran home.", ""]
    ours = load_encoder(str(workdir / "merged")).encode(texts)
    theirs = SentenceTransformer(str(workdir / "export"), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    table = (workdir / "summary.md").read_text()
    assert "| r050 |" in table and "| merged |" in table
    saved = json.loads((workdir / "summary.json").read_text())
    assert [r["model"] for r in saved["models"]] == ["base", "r050", "r100", "merged"]
    assert saved["models"][-1]["steps"] == sum(r["steps"] for r in saved["members"])


def test_bad_bag_sections_name_the_key():
    config = tiny_config()
    with config.unlocked():
        config.bag.ratios = (0.5, 1.5)
    with pytest.raises(ConfigError, match=r"config\.bag\.ratios"):
        bag_members(config.bag)
    config = tiny_config()
    with config.unlocked():
        config.bag.member = 7
    with pytest.raises(ConfigError, match=r"config\.bag\.member=7"):
        bag_members(config.bag)


def test_merged_export_carries_the_card_and_provenance(killed_then_resumed_bag):
    from huggingface_hub import ModelCard

    from boom_jax.training.provenance import file_sha256

    workdir, summary, *_ = killed_then_resumed_bag
    export = workdir / "export"
    provenance = json.loads((export / "boom.json").read_text())
    assert provenance["kind"] == "merged" and provenance["merge"]["method"] == "multislerp"
    members = {m["name"]: m for m in provenance["merge"]["members"]}
    assert list(members) == ["r050", "r100"]
    for name, record in zip(("r050", "r100"), summary["members"]):
        manifest = workdir / "members" / name / "subset_manifest.json"
        assert members[name]["manifest_sha256"] == file_sha256(manifest)
        assert (members[name]["ratio"], members[name]["seed"], members[name]["steps"]) == (
            record["ratio"], record["seed"], record["steps"])
    training = provenance["training"]
    assert training["steps"] == sum(r["steps"] for r in summary["members"])
    assert {d["name"]: d["examples"] for d in training["datasets"]} == {
        d.name: len(d) for d in builtin_train_datasets(limit=tiny_config().data.limit)}
    card = ModelCard.load(export / "README.md")  # parses and validates the metadata offline
    assert card.data.library_name == "sentence-transformers" and "merge" in card.data.tags
    # a random init: no base model in the metadata, the architecture's source in the recipe
    assert card.data.base_model is None and card.data.license == "apache-2.0"
    assert training["random_init_from"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert members["r050"]["manifest_sha256"] in card.text and "merge_method: multislerp" in card.text

    import warnings

    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SentenceTransformer(str(export), device="cpu")
    assert not caught, [str(w.message) for w in caught]  # the merged export loads without any warning

"""Resumes that are honest: a changed config is refused or takes real effect, a damaged newest checkpoint
falls back to the newest intact one, one run per workdir, bad records skipped and counted from the config,
and a model folder without tokenizer files refused before any work."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from boom_jax.errors import ConfigError
from boom_jax.training.checkpoint import CheckpointError
from boom_jax.training.loop import train
from boom_jax.training.optim import make_schedule
from boom_jax.training.workdir_lock import WorkdirLock, WorkdirLockedError


def tiny_files_config(data_file: str, **train):
    import ml_collections

    from configs import tiny

    c = tiny.get_config()
    c.model.sizes = ml_collections.ConfigDict(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32))
    c.data.query_max_len = c.data.passage_max_len = 16
    c.data.source = "files"
    c.data.datasets = ml_collections.ConfigDict({"qa": {"path": data_file}})
    c.data.on_error = "skip"
    c.train.max_steps = 4
    c.train.log_every = 1
    c.train.warmup_ratio = 0.0
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 3
    c.checkpoint.async_save = False
    c.export.model_folder = False
    for k, v in train.items():
        c.train[k] = v
    return c


def snapshot(root: str) -> dict[str, str]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
        out[os.path.relpath(path, root)] = (hashlib.sha256(open(path, "rb").read()).hexdigest()
                                            if os.path.isfile(path) else "dir")
    return out


def metrics(workdir: str) -> dict[int, dict]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    out: dict[int, dict] = {}
    for r in rows:
        out.setdefault(r["step"], {}).update(r)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step run on a JSONL file with two bad records (skipped by config.data.on_error)."""
    root = tmp_path_factory.mktemp("resume")
    from jax._src import compilation_cache

    from boom_jax.training.compile_cache import enable_compilation_cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    previous = {k: getattr(jax.config, k) for k in keys}
    enable_compilation_cache(str(root / "xla"), min_compile_time_secs=0.0)  # the later runs reuse the programs
    lines = [json.dumps({"query": f"question {i}", "pos": [f"answer {i}"], "neg": [f"other {i}"]}) for i in range(24)]
    lines.insert(3, '{"query": "broken", "pos": ["x"],,}')
    lines.insert(7, json.dumps({"query": "no positive", "pos": []}))
    data = root / "qa.jsonl"
    data.write_text("\n".join(lines) + "\n")
    workdir = str(root / "base")
    result = train(tiny_files_config(str(data)), workdir)
    assert result.steps == 4
    yield {"root": str(root), "data": str(data), "workdir": workdir,
           "params": jax.tree.map(np.asarray, jax.device_get(result.params))}
    for k, v in previous.items():  # leave the session's JAX settings as they were
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_on_error_skip_from_the_config_counts_by_reason(run):
    report = json.load(open(os.path.join(run["workdir"], "data_report.json")))
    assert report["loaded"] == 24
    assert report["skipped"] == {"bad JSON": 1, "field 'pos'": 1}
    assert "qa.jsonl:4: malformed JSON" in report["first_errors"][0]
    step0 = metrics(run["workdir"])[0]
    assert step0["data/skipped"] == 2 and step0["data/skipped/bad JSON"] == 1 and step0["data/loaded"] == 24
    # a dataset's own on_error wins over the global key
    from boom_jax.data.validation import DataError
    from boom_jax.training.train_data import load_train_datasets

    c = tiny_files_config(run["data"])
    c.data.datasets.qa.on_error = "raise"
    with pytest.raises(DataError, match=r"qa.jsonl:4: malformed JSON"):
        load_train_datasets(c)
    c.data.on_error = "raise"
    c.data.datasets.qa.on_error = "skip"
    assert len(load_train_datasets(c)[0].examples) == 24


def test_resume_with_a_changed_run_key_is_refused_and_changes_nothing(run):
    before = snapshot(run["workdir"])
    c = tiny_files_config(run["data"], learning_rate=2e-3)
    c.data.train_group_size = 3
    with pytest.raises(ConfigError) as err:
        train(c, run["workdir"])
    message = str(err.value)
    assert "cannot resume from step 4" in message
    assert "config.train.learning_rate: 0.001 in the checkpoint, 0.002 now" in message
    assert "config.data.train_group_size: 2 in the checkpoint, 3 now" in message
    assert snapshot(run["workdir"]) == before


def test_longer_run_rebuilds_the_schedule_and_says_so(run, tmp_path, caplog):
    workdir = str(tmp_path / "longer")
    shutil.copytree(run["workdir"], workdir)
    c = tiny_files_config(run["data"], max_steps=8)
    c.eval.at_end = False
    with caplog.at_level(logging.WARNING, logger="boom_jax.train"):
        result = train(c, workdir)
    assert result.steps == 8 and result.total_steps == 8
    assert "the learning-rate schedule is rebuilt to decay until step 8" in caplog.text
    assert "config.train.max_steps changed from 4 to 8" in caplog.text
    lr = {s: m["lr"] for s, m in metrics(workdir).items() if "lr" in m}
    schedule = make_schedule(1e-3, 8, 0, "linear")
    # the extra steps train at the rebuilt schedule's rates (before: 0, the old schedule's end)
    for step in range(5, 9):
        assert lr[step] == pytest.approx(float(schedule(step - 1)), rel=1e-6) and lr[step] > 0
    # ... and the optimizer state's schedule is the rebuilt one: with the checkpoint's (4 steps, over at
    # step 4) every extra update would have had lr 0 and left the params where step 4 left them
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers={
        "train_state": ocp.StandardCheckpointHandler()})
    saved = manager.restore(8, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))["train_state"]
    manager.close()
    schedules = []
    jax.tree_util.tree_map_with_path(lambda p, x: schedules.append(int(x)) if "total" in jax.tree_util.keystr(p)
                                     else None, saved)
    assert schedules and set(schedules) == {8}
    encoder_changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b),
                                                   jax.device_get(result.params)["encoder"], run["params"]["encoder"]))
    assert encoder_changed and all(encoder_changed)


def _damage(workdir: str, step: int) -> None:
    for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "params", "**", "*"), recursive=True):
        if os.path.isfile(f) and "ocdbt" in f and os.path.getsize(f) > 100:
            with open(f, "r+b") as handle:
                handle.truncate(10)


def test_damaged_latest_checkpoint_falls_back_exactly(run, tmp_path, caplog, capfd):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(run["workdir"], workdir)
    shutil.rmtree(os.path.join(workdir, "model"), ignore_errors=True)
    _damage(workdir, 4)
    os.makedirs(os.path.join(workdir, ".model.tmp-0badc0de"))  # a killed atomic write's leftovers
    open(os.path.join(workdir, "config.json.tmp-12345678"), "w").write("{")
    with caplog.at_level(logging.WARNING, logger="boom_jax.train"):
        result = train(tiny_files_config(run["data"]), workdir)
    assert "checkpoint step 4 in" in caplog.text and "is damaged (" in caplog.text
    assert "resuming from step 2, the newest intact checkpoint" in caplog.text
    assert "Event loop is closed" not in capfd.readouterr().err
    assert result.steps == 4
    assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4"))
    assert not glob.glob(os.path.join(workdir, "*.tmp-*")) and not glob.glob(os.path.join(workdir, ".*.tmp-*"))
    # steps 3 and 4 re-run from step 2's exact state: the same params as the uninterrupted run
    got = jax.tree.map(np.asarray, jax.device_get(result.params))
    jax.tree.map(np.testing.assert_array_equal, got, run["params"])

    for step in (2, 4):
        _damage(workdir, step)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from \(step 4: .*; step 2: "):
        train(tiny_files_config(run["data"]), workdir)


LOCK_AND_EXIT = """
import sys
from boom_jax.training.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked")
"""


def test_workdir_lock_names_the_holder_and_dies_with_it(tmp_path):
    workdir = str(tmp_path / "w")
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            WorkdirLock(workdir).acquire()
    # a process that took the lock and died (no release) leaves its pid in the file, but no lock
    proc = subprocess.run([sys.executable, "-c", LOCK_AND_EXIT, workdir], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout.strip() == "locked", proc.stderr
    with WorkdirLock(workdir) as lock:
        assert json.load(open(lock.path))["pid"] == os.getpid()


def test_tokenizer_less_folder_refused_naming_the_files(tmp_path):
    from boom_jax.tokenization import TOKENIZER_VOCAB_FILES, TokenizerError, load_tokenizer

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and all(f in str(err.value) for f in TOKENIZER_VOCAB_FILES)


def test_missing_hard_negatives_are_reported_with_counts(caplog):
    from boom_jax.data.records import Example, TrainDataset
    from boom_jax.training.data_checks import check_train_datasets

    c = tiny_files_config("qa.jsonl")
    c.data.train_group_size = 4  # 3 hard negatives per group
    examples = [Example(dataset="qa", index=i, query=f"q{i}", pos=(f"p{i}",), neg=tuple(f"n{j}" for j in range(i % 4)),
                        task_type="retrieval") for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="boom_jax.train"):
        check_train_datasets(c, [TrainDataset(name="qa", task_type="retrieval", examples=examples)])
    assert ("dataset 'qa': 6 of 8 examples have fewer than the 3 hard negatives a group takes "
            "(config.data.train_group_size=4; fewest: 0)") in caplog.text


def test_keys_the_project_added_or_dropped_are_not_changes_of_the_run():
    from boom_jax.training.resume_rules import check_resume_config

    new = {"train": {"batch_size": 8, "max_steps": 4}, "data": {"on_error": "raise", "datasets": {"a": {"path": "x"}}}}
    saved = {"train": {"batch_size": 8, "max_steps": 4, "retired_key": True}, "data": {"datasets": {"a": {"path": "x"}}}}
    assert check_resume_config(saved, new, "w", 2) == []
    saved["data"]["datasets"]["b"] = {"path": "y"}  # the run's own data changed: refused
    with pytest.raises(ConfigError, match=r"config\.data\.datasets\.b\.path: 'y' in the checkpoint, '<absent>' now"):
        check_resume_config(saved, new, "w", 2)


def test_workflows_on_a_busy_workdir_are_refused_at_once(tmp_path):
    from boom_jax.boom.clusters import run_cluster_merge
    from boom_jax.boom.incremental import run_incremental
    from boom_jax.experiments.runner import run_experiment
    from boom_jax.training.stacked import train_stacked

    c = tiny_files_config("qa.jsonl")
    with WorkdirLock(str(tmp_path)):
        for workflow in (run_incremental, run_cluster_merge, run_experiment):
            with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
                workflow(c, str(tmp_path))
        with pytest.raises(WorkdirLockedError):
            train_stacked(c, str(tmp_path), [])
    assert os.listdir(tmp_path) == [".lock"]

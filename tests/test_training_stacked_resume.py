"""A stacked bag (both members in one program) stopped by SIGTERM (it saves and exits), resumed, killed
by SIGKILL mid-run and resumed again ends with exactly the params, losses and merged model of an
uninterrupted stacked bag."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from boom_jax.model_io import load_model
from boom_jax.training.checkpoint import latest_params, latest_step
from boom_jax.training.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBERS = ("r050", "r100")
STEPS = {"r050": 6, "r100": 12}  # 2 datasets x 48 examples, batch 8: half of them and all of them
# Padded batches of one fixed length: one compiled step shape (packed rows of varying counts and widths gave
# ten, most of this test's time); packed batches resume exactly in tests/test_data_packing.py and
# tests/test_packing_widths.py, and a packed stacked bag equals sequential members in tests/test_training_stacked.py.
ARGS = ["--config=configs/bag.py:tiny", "--config.bag.stacked=True", "--config.data.names=wordnet_gloss,debian_desc",
        "--config.data.limit=48", "--config.data.packing=False", "--config.data.fixed_length=True",
        "--config.train.log_every=1", "--config.checkpoint.keep=2", "--verbosity=0"]
# Two devices: one per member.
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
           HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO)


def _start(workdir: str) -> subprocess.Popen:
    env = dict(ENV, JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"))
    return subprocess.Popen([sys.executable, "-m", "boom_jax.train", *ARGS, f"--workdir={workdir}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _wait_for_checkpoint(workdir: str, step: int, proc: subprocess.Popen) -> None:
    """Until stacked checkpoint `step` is complete (Orbax names the folder once the save is done)."""
    path = os.path.join(workdir, "stacked", "checkpoints", str(step))
    deadline = time.time() + 900
    while not os.path.isdir(path):
        assert proc.poll() is None, f"the stacked bag exited before its checkpoint {step}:\n{proc.stdout.read()[-4000:]}"
        assert time.time() < deadline, f"no stacked checkpoint {step}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("stacked_resume")
    straight, killed = str(base / "straight"), str(base / "killed")
    proc_straight = _start(straight)
    proc = _start(killed)
    _wait_for_checkpoint(killed, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out_term, _ = proc.communicate(timeout=600)
    term_step = latest_step(os.path.join(killed, "stacked"))
    term = dict(returncode=proc.returncode, out=out_term, step=term_step)

    proc = _start(killed)
    _wait_for_checkpoint(killed, term_step + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kill_step = latest_step(os.path.join(killed, "stacked"))
    member_records = [os.path.exists(os.path.join(killed, "members", m, "member.json")) for m in MEMBERS]
    out_resumed = _finish(_start(killed))
    _finish(proc_straight)
    return dict(straight=straight, killed=killed, term=term, kill_step=kill_step, member_records=member_records,
                out_resumed=out_resumed)


def _assert_same_tree(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise on CPU


def test_sigterm_saves_and_stops_the_stacked_bag(runs):
    term = runs["term"]
    assert term["returncode"] == 1, term["out"][-4000:]  # stopped, not finished: the bag does not go on to merge
    assert f"were preempted at step {term['step']}" in term["out"]
    assert 2 <= term["step"] < max(STEPS.values())


def test_killed_stacked_bag_resumes_mid_run(runs):
    assert runs["term"]["step"] + 2 <= runs["kill_step"] < max(STEPS.values())
    assert runs["member_records"] == [False, False]  # killed before any member was recorded as finished
    assert f"resumed from step {runs['kill_step']}" in runs["out_resumed"]


def test_resumed_stacked_bag_equals_an_uninterrupted_one(runs):
    straight, killed = runs["straight"], runs["killed"]
    _assert_same_tree(latest_params(os.path.join(straight, "stacked")), latest_params(os.path.join(killed, "stacked")))
    for name in MEMBERS:
        _, want, _ = load_model(os.path.join(straight, "members", name, "model"))
        _, got, _ = load_model(os.path.join(killed, "members", name, "model"))
        _assert_same_tree(want, got)
        stream = [[(r["step"], r["loss"]) for r in read_metrics(os.path.join(w, "members", name)) if "loss" in r]
                  for w in (straight, killed)]
        assert stream[0] == stream[1] and [s for s, _ in stream[0]] == list(range(1, STEPS[name] + 1))
    _, want, _ = load_model(os.path.join(straight, "merged"))
    _, got, _ = load_model(os.path.join(killed, "merged"))
    _assert_same_tree(want, got)

"""The training loop end to end through the CLI: loss goes down, and a run stopped by SIGTERM and
then killed by SIGKILL resumes to exactly the params and data stream of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from boom_jax.training.checkpoint import latest_params, latest_step
from boom_jax.training.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/tiny.py"
STEPS, EVERY = 12, 3
# Padded batches (configs/tiny.py's fixed length): one compiled step shape (packed rows of varying counts gave six,
# most of this test's time); packed batches resume exactly in tests/test_data_packing.py and
# tests/test_packing_widths.py, and the packed loop trains end to end in the bag, cluster and experiment tests.
ARGS = [f"--config.train.max_steps={STEPS}", "--config.train.log_every=1", f"--config.checkpoint.every_steps={EVERY}",
        "--config.checkpoint.keep=5", "--config.data.packing=False"]
# One device in the child processes: the smallest compile; the mesh resolves to data=1.
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
           HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO)


def _start(workdir: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "boom_jax.train", f"--config={CONFIG}", f"--workdir={workdir}", *ARGS, *extra]
    # A shared compilation cache: later launches reuse the step compiled by earlier ones.
    env = dict(ENV, JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def _wait_for_checkpoint(workdir: str, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Poll until checkpoint `step` is finalized (Orbax renames its folder to the step number)."""
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before checkpoint {step}:\n{proc.stdout.read()}")
        if time.time() > deadline:
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and one stopped by SIGTERM, resumed, killed by SIGKILL and resumed again."""
    base = tmp_path_factory.mktemp("loop")
    straight, interrupted = str(base / "straight"), str(base / "interrupted")
    proc_a = _start(straight)  # runs alongside the interrupted one
    proc_nan = _start(str(base / "nan"), "--config.train.learning_rate=1e30", "--config.train.warmup_ratio=0.0",
                      "--config.train.max_consecutive_skips=2")

    proc = _start(interrupted)
    _wait_for_checkpoint(interrupted, EVERY, proc)
    proc.send_signal(signal.SIGTERM)
    out_term = _finish(proc)
    assert proc.returncode == 0, out_term
    term_step = latest_step(interrupted)

    proc = _start(interrupted)
    _wait_for_checkpoint(interrupted, 3 * EVERY, proc)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    kill_step = latest_step(interrupted)

    proc = _start(interrupted)
    out_last = _finish(proc)
    assert proc.returncode == 0, out_last
    out_a = _finish(proc_a)
    assert proc_a.returncode == 0, out_a
    out_nan = _finish(proc_nan)
    return dict(straight=straight, interrupted=interrupted, out_term=out_term, term_step=term_step,
                kill_step=kill_step, out_last=out_last, out_nan=out_nan, nan_returncode=proc_nan.returncode)


def test_training_lowers_the_loss_and_writes_outputs(runs):
    records = [r for r in read_metrics(runs["straight"]) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert last < 0.85 * first, (first, last)
    for key in ("lr", "grad_norm", "tokens_per_s", "examples_per_s", "mfu"):
        assert all(r[key] is not None and r[key] >= 0 for r in records), key
    assert any(k.startswith("loss/") for k in records[-1])
    workdir = runs["straight"]
    assert os.path.isfile(os.path.join(workdir, "config.json"))
    assert os.path.isfile(os.path.join(workdir, "model", "model_config.json"))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(workdir, "tensorboard")))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["max_steps"] == STEPS


def test_sigterm_saves_then_sigkill_resume_is_exact(runs):
    assert "preempted at step" in runs["out_term"] and EVERY <= runs["term_step"] < STEPS
    assert 3 * EVERY <= runs["kill_step"] < STEPS
    assert "done: 12 steps" in runs["out_last"]
    a = latest_params(runs["straight"])
    b = latest_params(runs["interrupted"])
    leaves_a, leaves_b = __import__("jax").tree.leaves(a), __import__("jax").tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise on CPU
    # The same data stream: every step saw the same dataset and produced the same loss.
    def stream(workdir):
        return [(r["step"], r["loss"], sorted(k for k in r if k.startswith("loss/")))
                for r in read_metrics(workdir) if "loss" in r]
    assert stream(runs["straight"]) == stream(runs["interrupted"])
    assert len(stream(runs["interrupted"])) == STEPS


def test_restore_train_state_onto_another_mesh(runs):
    """The 1-device run's checkpoint restored onto a data=2 x fsdp=4 mesh: same values, new shardings."""
    import jax

    from boom_jax.training.checkpoint import TrainCheckpointer
    from boom_jax.training.model_setup import load_model_for_training
    from boom_jax.training.run_setup import build_optimizer
    from boom_jax.training.sharding import DEFAULT_RULES, make_mesh
    from boom_jax.training.step import init_train_state, train_state_shardings
    from configs import tiny

    config = tiny.get_config()
    rng = jax.random.PRNGKey(config.seed)
    cfg, params, _ = load_model_for_training(config, rng)
    optimizer, _, _ = build_optimizer(config, cfg, STEPS)
    mesh = make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1)))
    shardings = train_state_shardings(params, optimizer, rng, mesh, DEFAULT_RULES[cfg.arch])
    shapes = jax.eval_shape(lambda p, r: init_train_state(p, optimizer, r), params, rng)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    state, data_state, saved_config = TrainCheckpointer(runs["straight"], every_steps=EVERY).restore(target)
    assert int(state["step"]) == STEPS and saved_config["train"]["max_steps"] == STEPS
    assert data_state["position"] > 0
    reference = latest_params(runs["straight"])
    for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    kernel = state["params"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert kernel.sharding == shardings["params"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert len(kernel.sharding.device_set) == 8


def test_non_finite_steps_stop_the_run_with_a_clear_message(runs):
    out = runs["out_nan"]
    assert runs["nan_returncode"] == 1, out
    assert "2 steps in a row had a non-finite loss or gradient" in out
    assert "config.train.max_consecutive_skips=2" in out and "Lower config.train.learning_rate" in out

"""Orbax train-state checkpoints: exact round trip, retention, cross-mesh restore, kill-safety."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from boom_jax.training.checkpoint import TrainCheckpointer, latest_params, latest_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = {"encoder": {"layer_0": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
                                      "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}},
              "embeddings": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(7 + seed),
            "rng": jax.random.PRNGKey(seed), "skipped": jnp.int32(seed)}


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_retention(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path), every_steps=2, keep=2, async_save=True)
    assert ckpt.latest_step() is None and not ckpt.should_save(0) and ckpt.should_save(4) and not ckpt.should_save(5)
    for step in (2, 4, 6):
        ckpt.save(step, _state(step), {"epoch": 0, "position": step}, {"train": {"batch_size": 8}})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 6] and latest_step(str(tmp_path)) == 6
    state, data_state, config = ckpt.restore(_state(0))
    _assert_equal(state, _state(6))
    assert data_state == {"epoch": 0, "position": 6} and config == {"train": {"batch_size": 8}}
    older, data_state, _ = ckpt.restore(_state(0), step=4)
    _assert_equal(older, _state(4))
    _assert_equal(latest_params(str(tmp_path)), _state(6)["params"])
    ckpt.close()


def test_restore_onto_another_mesh(tmp_path):
    assert jax.device_count() == 8
    mesh8 = jax.make_mesh((8,), ("data",))
    state = _state(1)
    row = NamedSharding(mesh8, P("data"))
    state["params"] = jax.tree.map(lambda x: jax.device_put(x, row if x.shape[0] % 8 == 0 else NamedSharding(mesh8, P())),
                                   state["params"])
    ckpt = TrainCheckpointer(str(tmp_path), every_steps=1, keep=1)
    ckpt.save(1, state, {"position": 1}, {})
    ckpt.close()

    mesh24 = jax.make_mesh((2, 4), ("data", "fsdp"))
    fsdp = NamedSharding(mesh24, P("fsdp", None))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=fsdp if x.ndim == 2
                                                         else NamedSharding(mesh24, P())), state["params"])
    params = latest_params(str(tmp_path), target=target)
    _assert_equal(params, state["params"])
    kernel = params["encoder"]["layer_0"]["kernel"]
    assert kernel.sharding == fsdp and kernel.addressable_shards[0].data.shape == (4, 8)

    full_target = dict(_state(0), params=target)
    restored, _, _ = TrainCheckpointer(str(tmp_path), every_steps=1, keep=1).restore(full_target)
    _assert_equal(restored, state)
    assert restored["params"]["embeddings"].sharding == fsdp


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from boom_jax.training.checkpoint import TrainCheckpointer
    ckpt = TrainCheckpointer(sys.argv[1], every_steps=1, keep=3, async_save=True)
    small = {"params": {"w": jnp.full((4,), 1.0)}, "step": jnp.int32(1)}
    ckpt.save(1, small, {"position": 1}, {"note": "first"})
    ckpt.wait()
    big = {"params": {"w": jnp.full((4,), 2.0), "big": jax.random.uniform(jax.random.PRNGKey(0), (96, 1024, 1024))},
           "step": jnp.int32(2)}
    ckpt.save(2, big, {"position": 2}, {"note": "second"})
    print("SAVING", flush=True)
    time.sleep(60)
""")


def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, workdir], stdout=subprocess.PIPE, env=env,
                            text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "SAVING", line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n not in ("1",)]
    assert leftovers and all("tmp" in n for n in leftovers), leftovers  # step 2 never finalized
    assert latest_step(workdir) == 1
    ckpt = TrainCheckpointer(workdir, every_steps=1, keep=3)
    state, data_state, config = ckpt.restore({"params": {"w": jnp.zeros((4,))}, "step": jnp.int32(0)})
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.ones(4, np.float32))
    assert (int(state["step"]), data_state, config) == (1, {"position": 1}, {"note": "first"})
    ckpt.save(2, state, data_state, config)  # the half-written step 2 does not block a new one
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()

"""Multi-host training: two jax.distributed processes on this machine (2 fake CPU devices each, gloo
collectives) end with the same params as one process with 4 devices; bad distributed flags fail
with a message naming them."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from boom_jax.training.distributed import DistributedInitError, global_batch, maybe_initialize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
STEPS = 3
TIMEOUT = 900  # seconds; the runs take ~30 s on an idle 2-core machine


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_all(procs: list[subprocess.Popen]) -> None:
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    single, multi = str(base / "single"), str(base / "multi")
    os.makedirs(single)
    os.makedirs(multi)
    port = _free_port()
    popen = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen([sys.executable, WORKER, single, str(STEPS)], env=_env(4), **popen)]
    procs += [subprocess.Popen([sys.executable, WORKER, multi, str(STEPS), f"localhost:{port}", "2", str(i)],
                               env=_env(2), **popen) for i in range(2)]
    _run_all(procs)
    return single, multi


def test_two_processes_equal_one_process(runs):
    single, multi = runs
    meta = {name: json.load(open(os.path.join(d, "losses.json"))) for name, d in (("single", single), ("multi", multi))}
    assert (meta["single"]["process_count"], meta["single"]["device_count"]) == (1, 4)
    assert (meta["multi"]["process_count"], meta["multi"]["device_count"]) == (2, 4)
    np.testing.assert_allclose(meta["multi"]["losses"], meta["single"]["losses"], rtol=1e-5)
    a, b = np.load(os.path.join(single, "params.npz")), np.load(os.path.join(multi, "params.npz"))
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for name in a.files:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=1e-5, err_msg=name)
    # The params did move (so equality is not that of two untouched inits).
    assert meta["single"]["losses"][-1] < meta["single"]["losses"][0]
    # Every process took part in the Orbax save: one complete checkpoint at the last step.
    assert os.listdir(os.path.join(multi, "run", "checkpoints")) == [str(STEPS)]


def test_partial_flags_are_refused():
    with pytest.raises(DistributedInitError, match="--num_processes, --process_id"):
        maybe_initialize(True, "localhost:1234", None, None)
    with pytest.raises(DistributedInitError, match="without --distributed"):
        maybe_initialize(False, None, 2, None)
    with pytest.raises(DistributedInitError, match="HOST:PORT"):
        maybe_initialize(True, "localhost", 2, 0)
    with pytest.raises(DistributedInitError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        maybe_initialize(True, "localhost:1234", 2, 2)
    assert maybe_initialize(False, None, None, None) is False


def test_single_process_batch_passes_through():
    batch = {"query_ids": np.zeros((4, 3), np.int32), "in_batch_negatives": True}
    assert global_batch(batch, mesh=None) is batch

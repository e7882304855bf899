"""The dry run compiled ahead of time for a TPU slice on this CPU-only host (libtpu's compile-only
client): XLA:TPU's own memory analysis decides, and a second process that wants
libtpu while one holds it is told so in one line. Needs libtpu installed (`pip install -e ".[tpu]"`
or `pip install "libtpu==0.0.42.1"`)."""

import os
import subprocess
import sys

import pytest

from boom_jax.training.dry_run import dry_run, format_report, tpu_topology_devices
from test_training_dry_run import qwen3_config, qwen3_folder  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tpu_report(qwen3_folder):  # noqa: F811
    return dry_run(qwen3_config(qwen3_folder, batch=8, length=64, layers=2, dtype="bfloat16"),
                   topology="v5p:2x2x1")


def test_step_compiles_for_a_v5p_slice_and_xla_tpu_decides(tpu_report):
    r = tpu_report
    assert (r["platform"], r["devices"], r["device_kind"]) == ("tpu", 4, "TPU v5")
    assert r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert r["estimate"] == "xla" and r["peak_bytes_per_device"] == r["xla_peak_bytes_per_device"]
    assert r["device_memory_bytes"] == 95 * 2**30 and r["fits"] is True
    # Arguments hold this device's params, optimizer state and batch shard exactly.
    assert r["argument_size_in_bytes"] >= r["param_bytes_per_device"] + r["opt_state_bytes_per_device"]
    assert r["temp_size_in_bytes"] > 0
    assert r["flops_per_step"] == pytest.approx(r["analytic_flops_per_step"], rel=1e-9)
    text = format_report(r)
    assert "XLA:TPU" in text and "estimate used     xla" in text and "fits: XLA peak" in text


def test_a_second_libtpu_process_is_told_about_the_lock(tpu_report):
    tpu_topology_devices("v5p:2x2x1")  # this process holds libtpu
    code = ("from boom_jax.training.dry_run import tpu_topology_devices\n"
            "try:\n    tpu_topology_devices('v5p:2x2x1')\nexcept ValueError as e:\n    print('ERROR', e)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "ERROR --topology=v5p:2x2x1: another process is using libtpu" in out.stdout, out.stderr[-2000:]

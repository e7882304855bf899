"""The launch scripts parse, answer --help, and build the commands they promise."""

import pathlib
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def test_all_three_launchers_exist():
    assert {p.name for p in SCRIPTS} >= {"local.sh", "gpu_slurm.sh", "tpu_pod.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_has_help(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Usage: launch/" + script.name)
    assert "boom_jax.train" in out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_unknown_option_is_refused(script):
    proc = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--bogus" in proc.stderr


def test_slurm_script_passes_distributed_flags_and_user_flags():
    out = subprocess.run(
        ["bash", str(LAUNCH / "gpu_slurm.sh"), "--dry-run", "--nodes=3", "configs/bag.py", "/shared/run",
         "--config.train.batch_size=64"],
        capture_output=True, text=True, check=True).stdout
    assert "#SBATCH --nodes=3" in out
    assert "--distributed" in out and "--num_processes=$SLURM_NTASKS" in out
    assert "--config.train.batch_size=64" in out


def test_tpu_script_runs_the_same_command_on_all_workers():
    out = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--name=pod", "--zone=us-central2-b",
         "configs/bag.py", "gs://bucket/run"],
        capture_output=True, text=True, check=True).stdout
    ssh_lines = [line for line in out.splitlines() if " ssh " in line]
    assert len(ssh_lines) == 2 and all("--worker=all" in line for line in ssh_lines)
    assert "boom_jax.train\\ --distributed" in ssh_lines[-1]

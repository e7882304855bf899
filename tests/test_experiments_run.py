"""A reduced comparison end to end on a tiny random model: the command, its records, merges and resume."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import experiment as experiment_config  # noqa: E402
from tests.helpers_logs import captured_logs  # noqa: E402

# Two datasets of two task types, a bag (r050, r100 = BLS) and its merge: the cheapest plan that
# trains, merges, records costs and reports (each extra run costs tens of seconds on 2 CPU cores).
OVERRIDES = ["--config.data.names=debian_desc,debian_section", "--config.experiment.strategies=bls,boom"]


def reduced_config():
    c = experiment_config.get_config("tiny")
    c.data.names = "debian_desc,debian_section"
    c.experiment.strategies = "bls,boom"
    return c


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    workdir = root / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.run([sys.executable, "-m", "boom_jax.experiments", "--config=configs/experiment.py:tiny",
                           f"--workdir={workdir}", *OVERRIDES], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout + proc.stderr  # the plan and the progress lines are logged (stderr)


def _record(path):
    return json.loads(pathlib.Path(path).read_text())


def test_plan_is_printed_and_every_run_recorded(experiment_dir):
    workdir, out = experiment_dir
    assert "Plan: 2 training runs, 1 merges, 2 models to report (global batch 8)." in out
    members = {m: _record(workdir / "boom" / "members" / m / "member.json") for m in ("r050", "r100")}
    assert (members["r050"]["steps"], members["r100"]["steps"]) == (2, 4)  # 16 examples per dataset, batch 8
    plan = _record(workdir / "plan.json")
    assert plan["member_steps"] == {"r050": 2, "r100": 4} and plan["train_runs"] == []
    assert [d["name"] for d in plan["datasets"]] == ["debian_desc", "debian_section"]


def test_costs_and_rows_in_results(experiment_dir):
    workdir, _ = experiment_dir
    summary = _record(workdir / "results.json")
    rows = {r["label"]: r for r in summary["rows"]}
    assert list(rows) == ["bls", "boom_50_100"]
    r050 = _record(workdir / "boom" / "members" / "r050" / "member.json")
    r100 = _record(workdir / "boom" / "members" / "r100" / "member.json")
    assert rows["bls"]["examples"] == r100["examples"] == 32 and rows["bls"]["source"] == "r100"
    boom = _record(workdir / "runs" / "boom_50_100" / "run.json")
    assert rows["boom_50_100"]["examples"] == r050["examples"] + r100["examples"] == 48
    assert rows["boom_50_100"]["wall_time_s"] == pytest.approx(
        r050["wall_time_s"] + r100["wall_time_s"] + boom["merge_wall_time_s"], abs=0.011)
    text = (workdir / "RESULTS.md").read_text()
    assert "| boom_50_100 | BOOM {50,100} | – | – |" in text and "--config.data.names=debian_desc,debian_section" in text


def test_merged_models_are_multislerp_of_their_inputs(experiment_dir):
    from boom_jax.merging.methods import MERGE_METHODS
    from boom_jax.model_io import load_model

    workdir, _ = experiment_dir
    _, merged, _ = load_model(str(workdir / "runs" / "boom_50_100" / "model"))
    trees = [load_model(str(workdir / "boom" / "members" / m / "model"))[1] for m in ("r050", "r100")]
    expected = MERGE_METHODS["multislerp"](trees)
    leaf = ("encoder", "layer_0", "attention", "self", "query", "kernel")
    got, want, member = merged, expected, trees[0]
    for k in leaf:
        got, want, member = got[k], want[k], member[k]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got, member)  # the members differ, so the merge is neither of them


def test_rerun_skips_finished_runs(experiment_dir):
    from boom_jax.experiments.runner import run_experiment

    workdir, _ = experiment_dir
    records = sorted(workdir.glob("runs/*/run.json")) + sorted(workdir.glob("boom/members/*/member.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    with captured_logs() as messages:
        summary = run_experiment(reduced_config(), str(workdir), command="rerun")
    out = "\n".join(messages)
    assert "bag members r050, r100 already finished" in out
    assert "merge boom_50_100 already done" in out
    assert "[experiment] training " not in out and "[bag] training" not in out
    assert {p: p.stat().st_mtime_ns for p in records} == before
    assert [r["examples"] for r in summary["rows"]] == [32, 48]

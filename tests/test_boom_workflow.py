"""The workflow kernel (boom_jax/boom/workflow.py): derived run configs, skip-or-train with a record, the
one summary writer. Cheap: nothing here trains except the resume test (one tiny run of 2 steps)."""

import json
import pathlib
import sys

import numpy as np
import pytest

from boom_jax.boom import workflow
from boom_jax.boom.merge_config import merge_spec
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import bag as bag_config  # noqa: E402
from tests.helpers_logs import captured_logs  # noqa: E402


def test_run_config_drops_sections_and_sets_nested_keys_on_a_copy():
    config = bag_config.get_config("tiny")
    derived = workflow.run_config(config, "r050", {"data.subset_ratio": 0.5, **workflow.PLAIN_RUN}, drop=("bag", "nope"))
    assert derived.name == f"{config.name}/r050" and "bag" not in derived
    assert derived.data.subset_ratio == 0.5 and derived.eval.at_end is False and derived.eval.every_steps == 0
    assert "bag" in config and config.data.subset_ratio == 1.0 and config.name == "bag"  # the original is untouched


def test_finished_run_is_skipped_and_its_record_reused(tmp_path):
    record = {"name": "r050", "steps": 3, "examples": 24, "wall_time_s": 1.0, "final_loss": 0.5, "model": "m"}
    (tmp_path / "member.json").write_text(json.dumps(record))
    before = (tmp_path / "member.json").stat().st_mtime_ns
    checked = []
    with captured_logs() as messages:  # no datasets: training would fail, so only a skip passes
        got = workflow.ensure_trained(bag_config.get_config("tiny"), str(tmp_path), [], record_file="member.json",
                                      tag="bag", label="member r050", check=checked.append)
    assert got == record and checked == [record]
    assert (tmp_path / "member.json").stat().st_mtime_ns == before
    assert messages == ["[bag] member r050 already finished (3 steps); skipping"]

    def refuse(found):
        raise ConfigError(f"holds a run of {found['steps']} steps")

    with pytest.raises(ConfigError, match="holds a run of 3 steps"):
        workflow.ensure_trained(bag_config.get_config("tiny"), str(tmp_path), [], record_file="member.json",
                                tag="bag", label="member r050", check=refuse)


def test_half_finished_run_resumes_and_then_is_skipped(tmp_path):
    config = bag_config.get_config("tiny")
    with config.unlocked():
        config.train.max_steps = 2
        config.checkpoint.every_steps = 1
        config.data.fixed_length = True
    config = workflow.run_config(config, "run", workflow.PLAIN_RUN, drop=("bag",))
    datasets = builtin_train_datasets(names=["debian_desc"], limit=16)
    args = dict(record_file="run.json", tag="test", label="run", fields={"name": "run"},
                after=lambda model: {"scored": model})
    first = workflow.ensure_trained(config, str(tmp_path), datasets, **args)
    assert first["steps"] == 2 and first["examples"] == 16 and first["scored"] == first["model"]
    (tmp_path / "run.json").unlink()  # as if killed after the last checkpoint, before the record
    with captured_logs() as messages:
        again = workflow.ensure_trained(config, str(tmp_path), datasets, **args)
    assert any(m.startswith("resumed from step 2") for m in messages), messages
    assert again["steps"] == 2 and again["model"] == first["model"]  # (no step ran: the loop reports no loss)
    # ... so the record takes the last logged loss, and its cost is the sum of both attempts
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert again["final_loss"] == logged[-1]["loss"] and np.isfinite(again["final_loss"]) and again["attempts"] == 2
    attempts = json.loads((tmp_path / "attempts.json").read_text())["attempts"]
    assert [a["steps"] for a in attempts] == [2, 2] and attempts[0]["wall_time_s"] == first["wall_time_s"]
    assert again["wall_time_s"] == pytest.approx(sum(a["wall_time_s"] for a in attempts), abs=0.011)
    with captured_logs() as messages:
        reused = workflow.ensure_trained(config, str(tmp_path), [], **args)
    assert (reused["steps"], reused["model"], reused["scored"]) == (2, again["model"], again["model"])
    assert messages == ["[test] run already finished (2 steps); skipping"]


def test_learned_weights_without_heldout_examples_are_refused_before_merging(tmp_path):
    config = bag_config.get_config("tiny")
    with config.unlocked():
        config.merge.weights = "auto:cocktail"
    spec = merge_spec(config, 2, allow_auto=True)
    with pytest.raises(ConfigError, match="need held-out examples"):
        workflow.merge_and_export(config, spec, {"a": "x", "b": "y"}, str(tmp_path / "merged"), str(tmp_path), tag="t")
    assert not (tmp_path / "merged").exists()


def test_summary_table_rows_scores_and_files(tmp_path):
    results = {"m": {"wordnet_gloss_retrieval": {"main_score": 0.5, "type": "retrieval", "domain": "in"}}}
    rows = workflow.scored([{"model": "base", "steps": 0, "examples": 0, "wall_time_s": 0.0},
                            {"model": "m", "steps": 2, "examples": 16, "wall_time_s": 1.25}], results)
    assert rows[0]["mean"] is None and rows[1]["mean"] == pytest.approx(0.5)
    table = workflow.score_table(rows)
    assert table[:2] == ["| model | steps | examples | wall time (s) | in-domain | out-of-domain | all |",
                         "|---|---:|---:|---:|---:|---:|---:|"]
    assert table[2] == "| base | 0 | 0 | 0.0 | - | - | - |" and table[3].endswith("| 50.00 |")
    assert workflow.markdown_table(["", "a"], [["a", "+0.1000"]]) == ["| | a |", "|---|---:|", "| a | +0.1000 |"]
    workflow.write_summary(str(tmp_path), "t", ["# T", *table], {"rows": rows})
    assert (tmp_path / "summary.md").read_text() == "\n".join(["# T", *table]) + "\n"
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][1]["steps"] == 2

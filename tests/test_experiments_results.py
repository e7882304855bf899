"""RESULTS.md, results.json and charts written from saved cost records and dev scores."""

import json
import pathlib
import sys

from boom_jax.experiments.plan import DatasetInfo
from boom_jax.experiments.results import write_results

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import experiment as experiment_config  # noqa: E402


def _entry(score, type_, domain):
    return {"main_score": score, "metric": "ndcg_at_10", "type": type_, "domain": domain, "evaluation_time": 1.0}


SCORES = {
    "bls": {"a_retrieval": _entry(0.50, "retrieval", "in"), "b_clustering": _entry(0.30, "clustering", "in"),
            "c_retrieval": _entry(0.70, "retrieval", "out")},
    "boom_80_100": {"a_retrieval": _entry(0.60, "retrieval", "in"), "b_clustering": _entry(0.20, "clustering", "in"),
                    "c_retrieval": _entry(0.80, "retrieval", "out")},
}
ROWS = [
    {"label": "bls", "strategy": "BLS (batch-level shuffling, all data)", "source": "r100", "steps": 10,
     "examples": 80, "wall_time_s": 12.5, "model": "/x/r100/model"},
    {"label": "boom_80_100", "strategy": "BOOM {80,100}", "source": "boom_80_100", "steps": 18, "examples": 144,
     "wall_time_s": 30.25, "model": "/x/boom_80_100/model"},
]
RECORDS = {"boom_80_100": {"inputs": ["r080", "r100"], "method": "multislerp"}}
DATASETS = [DatasetInfo("debian_desc", 16, "retrieval")]


def _run(scores, seed=0):
    """One seed's entry as boom_jax.experiments.runner.run_seed returns it."""
    return {"seed": seed, "rows": ROWS, "records": RECORDS, "results": scores, "items": None, "bag_dir": "/x/boom",
            "datasets": DATASETS}


def test_results_md_table_and_charts_from_saved_scores(tmp_path):
    config = experiment_config.get_config("tiny")
    summary = write_results(str(tmp_path), config, [_run(SCORES)], "python -m boom_jax.experiments X")
    text = (tmp_path / "RESULTS.md").read_text()
    # in-domain = mean(0.5, 0.3) = 40.00; out = 70.00; per type retrieval mean(0.5, 0.7) = 60.00; all 50.00.
    assert ("| bls | BLS (batch-level shuffling, all data) | 40.00 | 70.00 | 30.00 | 60.00 | 50.00 | 10 | 80 | 12.5 |"
            in text)
    assert "| boom_80_100 | BOOM {80,100} | 40.00 | 80.00 | 20.00 | 70.00 | 53.33 | 18 | 144 | 30.2 |" in text
    assert "python -m boom_jax.experiments X" in text
    assert "`bls` is the BOOM bag's 100% member (r100)" in text
    assert "config.data.limit=16" in text and "debian_desc (retrieval, 16)" in text
    for chart in ("charts/in_vs_out.png", "charts/cost_vs_score.png"):
        assert f"]({chart})" in text
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["bls", "boom_80_100"]
    assert abs(saved["rows"][1]["out_of_domain"] - 0.8) < 1e-12
    assert summary["rows"][0]["by_type"]["clustering"] == 0.30
    assert not list(tmp_path.rglob("*.tmp-*")), "temporary files left behind"


def test_results_md_without_scores_has_costs_and_no_charts(tmp_path):
    config = experiment_config.get_config("tiny")
    write_results(str(tmp_path), config, [_run(None)], "cmd")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| bls | BLS (batch-level shuffling, all data) | – | – | – | 10 | 80 | 12.5 |" in text
    assert "not evaluated" in text
    assert not (tmp_path / "charts").exists()

"""Report writer: results.json round trip, the Markdown table's numbers, a real PNG chart, bad input."""

import json
import os

import pytest

from boom_jax.evaluation import report

RESULTS = {
    "bls": {
        "RetA": {"main_score": 0.50, "metric": "ndcg_at_10", "type": "retrieval", "domain": "in"},
        "RetB": {"main_score": 0.30, "metric": "ndcg_at_10", "type": "retrieval", "domain": "out"},
        "Cls": {"main_score": 0.80, "metric": "accuracy", "type": "classification", "domain": "in"},
    },
    "boom": {
        "RetA": {"main_score": 0.60, "metric": "ndcg_at_10", "type": "retrieval", "domain": "in"},
        "RetB": {"main_score": 0.40, "metric": "ndcg_at_10", "type": "retrieval", "domain": "out"},
        "Cls": {"main_score": 0.70, "metric": "accuracy", "type": "classification", "domain": "in"},
    },
}


def test_summary_means():
    s = report.summarize(RESULTS)
    assert s["bls"]["mean"] == pytest.approx(1.6 / 3)
    assert s["bls"]["in_domain_mean"] == pytest.approx(0.65)
    assert s["boom"]["out_of_domain_mean"] == pytest.approx(0.40)
    assert s["boom"]["by_type"] == pytest.approx({"classification": 0.70, "retrieval": 0.50})
    only_in = {"m": {"T": {"main_score": 0.2, "type": "retrieval", "domain": "in"}}}
    assert report.summarize(only_in)["m"]["out_of_domain_mean"] is None


def test_write_report_from_saved_results(tmp_path):
    report.save_results(RESULTS, tmp_path / "saved.json")
    loaded = report.load_results(tmp_path / "saved.json")
    assert loaded == RESULTS
    paths = report.write_report(loaded, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["chart.png", "results.json", "table.md"]
    assert json.loads(open(paths["results.json"]).read()) == RESULTS
    table = open(paths["table.md"]).read()
    assert "| RetA | retrieval | in | ndcg_at_10 | 50.00 | 60.00 |" in table
    assert "| retrieval | 40.00 | 50.00 |" in table
    assert "| bls | 3 | 53.33 | 65.00 | 30.00 |" in table
    assert "| boom | 3 | 56.67 | 65.00 | 40.00 |" in table
    with open(paths["chart.png"], "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the report folder reads back as a results source
    assert report.load_results(tmp_path / "out") == RESULTS


def test_bad_results_are_rejected_with_their_location(tmp_path):
    bad = {"m": {"T": {"main_score": 0.5, "type": "retrieval"}}}
    with pytest.raises(ValueError, match=r"model 'm', task 'T': missing field\(s\) \['domain'\]"):
        report.write_report(bad, tmp_path / "r")
    (tmp_path / "broken.json").write_text('{"m": {\n  "T": oops}}')
    with pytest.raises(ValueError, match="broken.json: line 2: invalid JSON"):
        report.load_results(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="no results file"):
        report.load_results(tmp_path / "missing")
    with pytest.raises(ValueError, match="domain must be 'in' or 'out'"):
        report.validate_results({"m": {"T": {"main_score": 0.5, "type": "x", "domain": "both"}}})

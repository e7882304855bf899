"""The comparison over several seeds: one workdir per seed, intervals over seeds, paired bootstrap vs BLS."""

import json
import pathlib
import sys

import pytest

from boom_jax.errors import ConfigError
from boom_jax.experiments.runner import run_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import experiment as experiment_config  # noqa: E402


def seeded_config(seeds: int = 2):
    c = experiment_config.get_config("tiny")
    c.data.names = "debian_desc,debian_section"
    c.experiment.strategies = "bls,boom"
    c.experiment.seeds = seeds
    c.experiment.bootstrap_resamples = 200
    c.experiment.evaluate = True
    c.experiment.eval_tasks = "wordnet_gloss_retrieval,wordnet_webster_pairs"
    c.eval.max_queries, c.eval.max_documents, c.eval.max_texts, c.eval.max_seq_length = 8, 24, 16, 32
    return c


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seeds") / "w"
    summary = run_experiment(seeded_config(), str(workdir), command="cmd")
    return workdir, summary


def test_every_seed_trains_its_own_runs_and_bag_sample(seeded):
    workdir, summary = seeded
    assert summary["seeds"] == [0, 1]
    members = [json.loads((workdir / f"seed_{s}" / "boom" / "members" / "r050" / "member.json").read_text())
               for s in (0, 1)]
    assert members[0]["seed"] != members[1]["seed"]  # the bag's sampling seed moves with the seed
    for s in (0, 1):
        plan = json.loads((workdir / f"seed_{s}" / "plan.json").read_text())
        assert plan["seed"] == s
        assert (workdir / f"seed_{s}" / "runs" / "boom_50_100" / "model").is_dir()
        items = workdir / f"seed_{s}" / "eval" / "bls" / "items" / "bls"
        assert sorted(p.name for p in items.iterdir()) == ["wordnet_gloss_retrieval.json", "wordnet_webster_pairs.json"]


def test_results_report_intervals_comparisons_and_per_seed_scores(seeded):
    workdir, summary = seeded
    text = (workdir / "RESULTS.md").read_text()
    stats = summary["seed_statistics"]["boom_50_100"]
    # a row's cells: the mean over seeds +- the half-width of the t interval over them
    iv = stats["interval"]["in_domain"]
    assert f"{100 * iv['mean']:.2f} ± {100 * (iv['high'] - iv['low']) / 2:.2f}" in text
    assert len(stats["seeds"]["in_domain"]) == 2
    assert "## Paired comparisons against bls" in text and "### Seed 0" in text and "### Seed 1" in text
    cmp = summary["paired"]["rows"]["boom_50_100"]["vs_reference"]["all"]
    assert cmp["low"] <= cmp["difference"] <= cmp["high"] and 0 < cmp["p_value"] <= 1
    assert summary["paired"]["tasks"] == {"in_domain": ["wordnet_gloss_retrieval", "wordnet_webster_pairs"],
                                          "all": ["wordnet_gloss_retrieval", "wordnet_webster_pairs"]}
    claim = [c for c in summary["claims"] if c["row"] == "boom_50_100"]
    assert claim and claim[0]["verdict"] in ("holds", "does not hold", "cannot be told apart")
    assert f"**{claim[0]['verdict']}**" in text
    assert (workdir / "charts" / "vs_bls.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finished_experiment_is_read_back_and_bad_seeds_are_refused(seeded, tmp_path):
    workdir, summary = seeded
    again = run_experiment(seeded_config(), str(workdir), command="cmd")
    assert again["paired"] == json.loads(json.dumps(summary["paired"]))
    for bad in (0, -2):
        c = seeded_config()
        c.experiment.seeds = bad
        with pytest.raises(ConfigError, match="config.experiment.seeds"):
            run_experiment(c, str(tmp_path / "bad"))
        left = sorted(p.name for p in (tmp_path / "bad").iterdir()) if (tmp_path / "bad").exists() else []
        assert not [n for n in left if n.startswith(("seed_", "runs", "plan"))], left  # refused before any run

"""Provenance of a merged model: members with ratios, seeds, manifest hashes and dev scores beside the
merged one, the merge's own recipe in the card, rendered into an existing export without retraining."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from boom_jax.boom.provenance import member_entry, merged_provenance, write_export_card
from boom_jax.data.builtin import builtin_train_datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import bag as bag_config  # noqa: E402


def test_members_dev_scores_sit_beside_the_merged_one(tmp_path, minilm_path):
    from huggingface_hub import ModelCard

    from boom_jax.hf import export_sentence_transformers, load_hf_model
    from tests.helpers_tiny_models import make_tiny_bert_folder

    config = bag_config.get_config("tiny")
    datasets = builtin_train_datasets(names=["wordnet_gloss", "python_code"], limit=8)
    results = {name: {"task_a": {"main_score": score, "type": "retrieval", "metric": "ndcg_at_10"},
                      "task_b": {"main_score": score / 2, "type": "classification", "metric": "accuracy"}}
               for name, score in (("r050", 0.4), ("r100", 0.6), ("merged", 0.8))}
    members = []
    for name, ratio, seed in (("r050", 0.5, 11), ("r100", 1.0, 12)):
        member_dir = tmp_path / "members" / name
        member_dir.mkdir(parents=True)
        (member_dir / "subset_manifest.json").write_text(json.dumps({"ratio": ratio, "seed": seed}))
        record = {"name": name, "ratio": ratio, "seed": seed, "steps": 4, "examples": 32, "wall_time_s": 1.5,
                  "model": str(member_dir / "model")}
        members.append(member_entry(record, str(member_dir), str(tmp_path), results))
    assert members[0]["manifest_sha256"] == hashlib.sha256(
        (tmp_path / "members" / "r050" / "subset_manifest.json").read_bytes()).hexdigest()
    assert members[0]["dev_score"] == pytest.approx(0.3) and members[1]["model"] == "members/r100/model"
    provenance = merged_provenance(config, "merged", datasets, members,
                                   {"method": "linear", "weights": [0.25, 0.75], "params": {}, "base": None},
                                   model_dir=minilm_path, results=results, wall_time_s=4.0)
    assert provenance["training"]["steps"] == 8 and provenance["training"]["examples"] == 64
    assert provenance["evaluation"]["dev"] == {"task_a": 0.8, "task_b": 0.4}
    assert (provenance["license"], provenance["language"]) == ("apache-2.0", ["en"])  # from the base model card

    src = make_tiny_bert_folder(tmp_path / "src")
    cfg, params = load_hf_model(src)
    export = tmp_path / "export"
    export_sentence_transformers(params, cfg, src, export)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "recipe.yml").write_text("merge_method: linear\nmodels:\n  - model: ../members/r050/model\n")
    write_export_card(str(export), provenance)
    card = ModelCard.load(export / "README.md")
    assert "| r050 | 0.5 | 11 | 0.25 | 4 | 32 |" in card.text and "| 0.3 |" in card.text
    assert "| **merged** | | | | | | | 0.6 |" in card.text
    assert "  - model: ../members/r050/model" in card.text  # the merge's own recipe, verbatim
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"ndcg_at_10": 0.8, "accuracy": 0.4}
    saved = json.loads((export / "boom.json").read_text())
    assert saved["merge"]["members"][1]["dev_scores"] == {"task_a": 0.6, "task_b": 0.3}
    assert saved["merge"]["recipe"].startswith("merge_method: linear")

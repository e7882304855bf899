"""Teacher scores in the data: pos_scores / neg_scores read, validated (file, line, field) and kept
aligned with the positives when duplicates are dropped; JSONL and `datasets` folders alike."""

import json

import pytest

from boom_jax.data.sources import load_datasets
from boom_jax.data.validation import DataError

GOOD = {"query": "q1", "pos": ["p1", "p2"], "neg": ["n1", "n2", "n3"], "pos_scores": [0.9, 0.8],
        "neg_scores": [0.1, -0.2, 3]}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_scores_are_read_from_jsonl_and_datasets_folders(tmp_path):
    plain = {"query": "q2", "pos": ["p3"], "neg": ["n4"]}
    (dataset,) = load_datasets([{"path": _write(tmp_path / "d.jsonl", [GOOD, plain])}])
    first, second = dataset.examples
    assert first.pos_scores == (0.9, 0.8) and first.neg_scores == (0.1, -0.2, 3.0)
    assert second.pos_scores == () and second.neg_scores == ()
    folder = tmp_path / "hf"
    folder.mkdir()
    _write(folder / "part.json", [GOOD])
    (from_folder,) = load_datasets([{"path": str(folder), "format": "hf", "name": "hf"}])
    assert from_folder.examples[0].neg_scores == (0.1, -0.2, 3.0)


@pytest.mark.parametrize("change, field, message", [
    ({"pos_scores": [0.9]}, "pos_scores", "expected a list of 2 finite numbers (one per 'pos' entry), got 1"),
    ({"neg_scores": [0.1, 0.2]}, "neg_scores", "got 2"),
    ({"neg_scores": [0.1, "x", 1]}, "neg_scores", "got str at position 1"),
    ({"neg_scores": [0.1, True, 1]}, "neg_scores", "got bool at position 1"),
    ({"pos_scores": [0.9, float("nan")]}, "pos_scores", "got nan at position 1"),
    ({"pos_scores": 0.9}, "pos_scores", "got float"),
    ({"neg_scores": None}, "neg_scores", "expected teacher scores for both pos and neg"),
])
def test_bad_scores_name_file_line_and_field(tmp_path, change, field, message):
    path = _write(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "query": "q9", **change}])
    with pytest.raises(DataError) as error:
        load_datasets([{"path": path}])
    assert str(error.value).startswith(f"{path}:2: field '{field}': ")
    assert message in str(error.value)


def test_dropped_duplicate_positives_drop_their_scores(tmp_path):
    records = [{"query": "q", "pos": ["a"], "neg": [], "pos_scores": [1.0], "neg_scores": []},
               {"query": "q", "pos": ["b", "a", "c"], "pos_scores": [2.0, 3.0, 4.0], "neg": ["n"],
                "neg_scores": [0.5]}]
    (dataset,) = load_datasets([{"path": _write(tmp_path / "dup.jsonl", records)}])
    assert [(e.pos, e.pos_scores) for e in dataset.examples] == [(("a",), (1.0,)), (("b", "c"), (2.0, 4.0))]


def test_files_config_takes_the_data_path():
    from configs import minilm_files
    from boom_jax.training.config_validation import validate_config

    config = minilm_files.get_config("path=runs/scored.jsonl,smoke")
    validate_config(config, device_count=8, arch="bert")
    assert config.data.datasets.data.path == "runs/scored.jsonl" and config.train.max_steps == 6
    with pytest.raises(ValueError, match="expected path=FILE"):
        minilm_files.get_config("smoke")

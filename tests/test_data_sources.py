"""Sources and validation: JSONL files/folders/globs/gz, local `datasets` folders, errors naming
file, line and field, skip-and-count mode, duplicate removal, per-dataset settings."""

import gzip
import json

import pytest

from boom_jax.data.sources import DatasetSpec, load_datasets, parse_dataset_specs
from boom_jax.data.validation import DataError, LoadReport

GOOD = {"query": "what is a cat?", "pos": ["A cat is a small feline."], "neg": ["A dog barks.", "Fish swim."]}


def write_lines(path, lines):
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(data, encoding="utf-8")
    return str(path)


def load_one(path, **settings):
    return load_datasets([{"path": path, **settings}])


@pytest.mark.parametrize(
    "bad_line, field, message",
    [
        ('{"query": "q", "pos": ["p"]', None, "malformed JSON"),
        ({"pos": ["p"]}, "query", "expected a non-empty string, got nothing (missing)"),
        ({"query": "  ", "pos": ["p"]}, "query", "got an empty string"),
        ({"query": 5, "pos": ["p"]}, "query", "expected a non-empty string, got int"),
        ({"query": "q"}, "pos", "expected a non-empty list of strings, got nothing (missing)"),
        ({"query": "q", "pos": []}, "pos", "got an empty list"),
        ({"query": "q", "pos": 3}, "pos", "expected a non-empty list of strings, got int"),
        ({"query": "q", "pos": ["p", 2]}, "pos", "got int at position 1"),
        ({"query": "q", "pos": ["p"], "neg": "n"}, "neg", "expected a list of strings, got str"),
        ({"query": "q", "pos": ["p"], "prompt": ["x"]}, "prompt", "expected a string, got list"),
        ([1, 2], None, "expected a JSON object, got list"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, bad_line, field, message):
    path = write_lines(tmp_path / "x.jsonl", [GOOD, GOOD | {"query": "other"}, bad_line])
    with pytest.raises(DataError) as info:
        load_one(path)
    text = str(info.value)
    prefix = f"{path}:3: field {field!r}: " if field else f"{path}:3: "
    assert text.startswith(prefix), text
    assert message in text


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"query": "caf\xe9", "pos": ["p"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid UTF-8 at byte 14"):
        load_one(str(path))


def test_missing_file_and_empty_glob_are_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: no such file"):
        load_one(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(DataError, match=r"\*\.jsonl: no \.jsonl or \.jsonl\.gz file matches"):
        load_one(str(tmp_path / "*.jsonl"))
    with pytest.raises(DataError, match=r"missing_folder: no such file or folder"):
        load_one(str(tmp_path / "missing_folder"))


def test_skip_mode_counts_and_duplicates_dropped(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        GOOD,
        "not json",
        {"query": "q2", "pos": 7},
        {"query": "q3", "pos": ["p3", "p3b"]},
        GOOD,  # exact duplicate pair: dropped
        {"query": "q3", "pos": ["p3", "p3c"]},  # one duplicate pair, one new positive
        {"query": "", "pos": ["x"]},
        "",  # blank lines are ignored
    ])
    report = LoadReport()
    (dataset,) = load_datasets([{"path": path}], on_error="skip", report=report)
    assert [e.query for e in dataset.examples] == ["what is a cat?", "q3", "q3"]
    assert dataset.examples[2].pos == ("p3c",)
    assert [e.index for e in dataset.examples] == [0, 1, 2]
    assert report.num_skipped == 3
    assert report.skipped == {"bad JSON": 1, "field 'pos'": 1, "field 'query'": 1}
    assert report.duplicate_pairs == 2 and report.duplicate_examples == 1
    assert report.loaded == 3
    summary = report.summary()
    assert "skipped 3 bad records" in summary and f"{path}:3: field 'pos'" in summary


def test_folder_glob_gzip_and_settings(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_lines(folder / "a.jsonl", [GOOD, {"query": "q", "pos": ["p"], "type": "classification"}])
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(5):
            f.write(json.dumps({"query": f"q{i}", "pos": [f"p{i}"], "prompt": "Classify: "}) + "\n")
    (folder / "notes.txt").write_text("ignored")
    per_file = load_one(str(folder))
    assert [(d.name, len(d)) for d in per_file] == [("a", 2), ("b", 5)]
    assert per_file[0].task_type == "classification" and per_file[0].in_batch_negatives is False
    assert per_file[1].examples[0].prompt == "Classify: "
    merged = load_one(str(folder / "*.jsonl*"), name="all", task_type="clustering", instruction="Cluster: ",
                      limit=4, hard_negatives=2)
    (d,) = merged
    assert d.name == "all" and len(d) == 4 and d.hard_negatives == 2 and not d.in_batch_negatives
    assert [e.prompt for e in d.examples] == ["Cluster: ", "Cluster: ", "Classify: ", "Classify: "]
    assert [e.task_type for e in d.examples] == ["clustering", "classification", "clustering", "clustering"]
    forced = load_one(str(folder / "a.jsonl"), in_batch_negatives=True, task_type="classification")
    assert forced[0].in_batch_negatives is True


def test_config_dict_specs_and_errors(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [GOOD])
    specs = parse_dataset_specs({"cats": {"source": path, "instruction": "Find: ", "limit": 0}})
    assert specs == [DatasetSpec(path=path, name="cats", instruction="Find: ", limit=0)]
    (d,) = load_datasets({"cats": {"path": path}, "dogs": {"path": path}})[:1]
    assert d.name == "cats" and d.examples[0].dataset == "cats"
    with pytest.raises(ValueError, match=r"datasets\.cats: unknown setting\(s\) \['negatives'\]"):
        parse_dataset_specs({"cats": {"path": path, "negatives": 3}})
    with pytest.raises(ValueError, match="two training datasets are named 'x'"):
        load_datasets([{"path": path}, {"path": path}])
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_datasets([{"path": path}], on_error="ignore")


def test_local_hf_datasets_folders(tmp_path):
    import datasets

    rows = [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]} for i in range(6)]
    rows[4] = {"query": "q4", "pos": [], "neg": []}
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"saved\[train\]:row 5: field 'pos': .* got an empty list"):
        load_one(str(saved))
    report = LoadReport()
    (d,) = load_datasets([{"path": str(saved), "name": "hfset"}], on_error="skip", report=report)
    assert [e.query for e in d.examples] == ["q0", "q1", "q2", "q3", "q5"] and report.num_skipped == 1
    assert d.examples[0].neg == ("n0",)
    parquet = tmp_path / "pq"
    parquet.mkdir()
    datasets.Dataset.from_list(rows[:3]).to_parquet(str(parquet / "part-0.parquet"))
    (p,) = load_one(str(parquet), task_type="sts")
    assert p.name == "pq" and [e.query for e in p.examples] == ["q0", "q1", "q2"] and p.task_type == "sts"

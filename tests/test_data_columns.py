"""Sentence-transformers style datasets (anchor / positive / negative_N columns, or a columns mapping)
train without conversion; document-side prompts reach the passages the batcher tokenizes."""

import json

import pytest

from boom_jax.data.batcher import Batcher
from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.sources import load_datasets, map_columns
from boom_jax.data.validation import DataError
from boom_jax.models.config import ModelConfig
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from boom_jax.training.train_data import apply_passage_prompts, document_prompt

ST_ROWS = [
    {"anchor": "what is a cat?", "positive": "A cat is a small feline.", "negative_2": "Cars have wheels.",
     "negative_1": "Dogs bark.", "negative": "Fish swim."},
    {"anchor": "capital of France?", "positive": "Paris is the capital of France.", "negative_1": "Rome is in Italy.",
     "negative_2": "Berlin is in Germany.", "negative": "Madrid is in Spain."},
]


def test_sentence_transformers_columns_are_read_as_the_standard_fields():
    record = map_columns(ST_ROWS[0], None, "x:1")
    assert record == {"query": "what is a cat?", "pos": ["A cat is a small feline."],
                      "neg": ["Fish swim.", "Dogs bark.", "Cars have wheels."]}  # negative, negative_1, negative_2
    assert map_columns({"query": "q", "positive": "p"}, None, "x:1") == {"query": "q", "pos": ["p"], "neg": []}
    standard = {"query": "q", "pos": ["p"], "neg": ["n"]}
    assert map_columns(standard, None, "x:1") is standard  # the standard format passes untouched
    mapped = map_columns({"question": "q", "answer": "a", "hard": ["h1", "h2"], "other": "o"},
                         {"query": "question", "pos": "answer", "neg": ["hard", "other"]}, "x:3")
    assert (mapped["query"], mapped["pos"], mapped["neg"]) == ("q", ["a"], ["h1", "h2", "o"])
    with pytest.raises(DataError, match=r"^x:4: field 'pos': column 'answer' \(the dataset's columns.pos\) is missing"):
        map_columns({"question": "q"}, {"query": "question", "pos": "answer"}, "x:4")


def test_datasets_in_sentence_transformers_layout_train_without_conversion(tmp_path):
    import datasets

    jsonl = tmp_path / "triplets.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ST_ROWS))
    folder = tmp_path / "hf"
    datasets.Dataset.from_list([{"question": r["anchor"], "answer": r["positive"], "bad": r["negative"]}
                                for r in ST_ROWS]).save_to_disk(str(folder))
    loaded = load_datasets({
        "triplets": {"path": str(jsonl), "hard_negatives": 3},
        "qa": {"path": str(folder), "columns": {"query": "question", "pos": "answer", "neg": "bad"},
               "passage_prompt": "passage: "},
    })
    triplets, qa = loaded
    assert [e.query for e in triplets.examples] == ["what is a cat?", "capital of France?"]
    assert list(triplets.examples[1].neg) == ["Madrid is in Spain.", "Rome is in Italy.", "Berlin is in Germany."]
    assert (qa.examples[0].query, list(qa.examples[0].pos), list(qa.examples[0].neg)) == (
        "what is a cat?", ["A cat is a small feline."], ["Fish swim."])
    assert qa.passage_prompt == "passage: " and triplets.passage_prompt == ""
    with pytest.raises(ValueError, match=r"datasets\.qa\.columns\.answer: unknown field"):
        load_datasets({"qa": {"path": str(folder), "columns": {"answer": "answer"}}})
    with pytest.raises(ValueError, match=r"datasets\.qa\.columns\.query: expected a column name, got \['a', 'b'\]"):
        load_datasets({"qa": {"path": str(folder), "columns": {"query": ["a", "b"]}}})


def test_document_prompts_reach_the_passages(minilm_path):
    def dataset(name, passage_prompt=""):
        examples = [Example(dataset=name, index=i, query=f"query {i}", pos=[f"answer {i}"], neg=[f"other {i}"])
                    for i in range(4)]
        return TrainDataset(name=name, task_type="retrieval", examples=examples, passage_prompt=passage_prompt)

    e5 = ModelConfig(prompts={"query": "query: ", "document": "passage: "})
    assert document_prompt(e5) == "passage: " and document_prompt(ModelConfig(prompts={"document": ""})) == ""
    own, default = apply_passage_prompts([dataset("own", "doc: "), dataset("default")], document_prompt(e5))
    assert (own.examples[0].pos, own.examples[0].neg) == (["doc: answer 0"], ["doc: other 0"])
    assert (default.examples[1].pos, default.examples[1].query) == (["passage: answer 1"], "query 1")
    assert apply_passage_prompts([dataset("none")])[0].examples[0].pos == ["answer 0"]

    tok = load_tokenizer(minilm_path)
    batch = next(iter(Batcher([default], TextTokenizer(tok, 16), TextTokenizer(tok, 16), batch_size=2, group_size=2)))
    passages = tok.batch_decode(batch["passage_ids"], skip_special_tokens=True)
    assert all(p.startswith("passage : ") or p.startswith("passage: ") for p in passages), passages

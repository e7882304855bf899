"""Batcher: fixed shapes in group layout, instructions, negatives, exact resume, multi-host slices."""

import hashlib
import json

import numpy as np
import pytest

from boom_jax.data.batcher import Batcher, choose_passages
from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.sampling import dataset_rng
from boom_jax.tokenization import TextTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tokenizers(minilm_path):
    tok = load_tokenizer(minilm_path)
    return TextTokenizer(tok, max_length=32), TextTokenizer(tok, max_length=64)


def make_dataset(name, n, task_type="retrieval", negs=3, instruction="", in_batch=True, hard_negatives=None):
    examples = [
        Example(dataset=name, index=i, query=f"what is {name} item {i}?", pos=(f"{name} item {i} is a thing.",),
                neg=tuple(f"{name} distractor {i}.{k}" for k in range(negs)), prompt=instruction, task_type=task_type)
        for i in range(n)
    ]
    return TrainDataset(name=name, task_type=task_type, examples=examples, in_batch_negatives=in_batch,
                        instruction=instruction, hard_negatives=hard_negatives)


DATASETS = [
    make_dataset("web", 24, instruction="Instruct: find the answer\nQuery: "),
    make_dataset("topics", 13, "classification", negs=1, in_batch=False),
    make_dataset("pairs", 10, negs=0),
]


def batch_digest(batch) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(np.asarray(batch[key]).tobytes())
    return h.hexdigest()


def test_shapes_group_layout_and_instruction(tokenizers):
    qtok, ptok = tokenizers
    batcher = Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=3, seed=0)
    assert batcher.steps_per_epoch == 6 + 3 + 2
    batches = list(batcher)
    assert len(batches) == 11
    for b in batches:
        assert b["query_ids"].shape[0] == 4 and b["query_ids"].dtype == np.int32
        assert b["passage_ids"].shape[0] == 12 and b["passage_mask"].shape == b["passage_ids"].shape
        assert b["query_ids"].shape[1] in qtok.buckets and b["passage_ids"].shape[1] in ptok.buckets
        name = DATASETS[b["dataset_id"]].name
        assert b["in_batch_negatives"] == (name != "topics")
    web = next(b for b in batches if b["dataset_id"] == 0)
    tok = qtok.tokenizer
    queries = tok.batch_decode(web["query_ids"], skip_special_tokens=True)
    passages = tok.batch_decode(web["passage_ids"], skip_special_tokens=True)
    items = []
    for q, group in zip(queries, np.reshape(passages, (4, 3))):
        assert q.startswith("instruct : find the answer query : what is web item")
        item = q.split("item ")[1].rstrip(" ?")
        items.append(int(item))
        assert group[0] == f"web item {item} is a thing."  # positive first
        assert all(p.startswith(f"web distractor {item}.") for p in group[1:])  # its own hard negatives
        assert len(set(group[1:])) == 2  # drawn without replacement
    web_examples = [DATASETS[0].examples[i] for i in items]
    expected_ids, expected_mask = qtok([f"Instruct: find the answer\nQuery: {e.query}" for e in web_examples])
    np.testing.assert_array_equal(web["query_ids"], expected_ids)
    np.testing.assert_array_equal(web["query_mask"], expected_mask)


def test_negatives_cycled_or_drawn_from_other_examples():
    rng = dataset_rng(0, "t")
    one_neg = choose_passages(DATASETS[1], 5, 3, rng)
    assert one_neg == ["topics item 5 is a thing."] + ["topics distractor 5.0"] * 3
    no_neg = choose_passages(DATASETS[2], 4, 5, rng)
    assert no_neg[0] == "pairs item 4 is a thing." and len(no_neg) == 6
    assert all(p.startswith("pairs item ") and p != no_neg[0] for p in no_neg[1:])
    assert choose_passages(DATASETS[0], 2, 0, rng) == ["web item 2 is a thing."]


def test_resume_yields_identical_remaining_stream(tokenizers):
    qtok, ptok = tokenizers
    make = lambda: Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=2, seed=3, num_epochs=2)
    full = [batch_digest(b) for b in make()]
    assert len(full) == 22 and len(set(full)) == 22  # the second epoch differs from the first
    uncached = Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=2, seed=3, num_epochs=2, token_cache_size=0)
    assert [batch_digest(b) for b in uncached] == full  # the token cache changes nothing
    tiny_cache = Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=2, seed=3, num_epochs=2, token_cache_size=5)
    assert [batch_digest(b) for b in tiny_cache] == full and len(tiny_cache._passage_cache) == 5
    first = make()
    for _ in range(8):
        next(first)
    state = json.loads(json.dumps(first.state()))
    resumed = make()
    resumed.restore(state)
    assert [batch_digest(b) for b in resumed] == full[8:]
    with pytest.raises(ValueError, match="seed=3 but this batcher has 4"):
        Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=2, seed=4).restore(state)


def test_host_slices_concatenate_to_the_global_batch(tokenizers):
    qtok, ptok = tokenizers
    datasets = DATASETS[:2] + [make_dataset("short", 12, hard_negatives=0)]
    global_batches = list(Batcher(datasets, qtok, ptok, batch_size=4, group_size=2, seed=1))
    hosts = [list(Batcher(datasets, qtok, ptok, batch_size=4, group_size=2, seed=1, process_index=i,
                          process_count=2)) for i in range(2)]
    assert any(b["passage_ids"].shape[0] == 4 for b in global_batches)  # hard_negatives=0: group of 1
    for g, h0, h1 in zip(global_batches, *hosts, strict=True):
        for key in ("query_ids", "query_mask", "passage_ids", "passage_mask"):
            assert h0[key].shape[0] == g[key].shape[0] // 2
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), g[key])
        assert h0["dataset_id"] == h1["dataset_id"] == g["dataset_id"]
    with pytest.raises(ValueError, match="divisible by process_count 3"):
        Batcher(datasets, qtok, ptok, batch_size=4, process_index=0, process_count=3)


def test_character_cap_keeps_the_tokens_of_long_texts(tokenizers):
    import inspect

    from boom_jax.data.batcher import cap_chars

    _, ptok = tokenizers
    source = inspect.getsource(inspect)
    texts = [source[i * 3000 : i * 3000 + 6000] for i in range(8)] + ["short text"]
    capped = cap_chars(texts, ptok)
    assert max(len(t) for t in capped) == 64 * 16 < len(texts[0])
    for a, b in zip(ptok(capped), ptok(texts)):
        np.testing.assert_array_equal(a, b)


def test_prefetching_batcher_matches_and_resumes(tokenizers):
    from boom_jax.data.batcher import PrefetchingBatcher

    qtok, ptok = tokenizers
    make = lambda: Batcher(DATASETS, qtok, ptok, batch_size=4, group_size=2, seed=5)
    plain = [batch_digest(b) for b in make()]
    pre = PrefetchingBatcher(make(), depth=3)
    head = [batch_digest(next(pre)) for _ in range(4)]
    state = pre.state()
    pre.close()
    assert head == plain[:4] and state["position"] == 4
    resumed = make()
    resumed.restore(state)
    assert [batch_digest(b) for b in PrefetchingBatcher(resumed)] == plain[4:]

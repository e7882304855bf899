"""The no-duplicates plan: no query or positive text twice in a batch, every item at most once per
epoch, the same plan on every call; without it the same data does put duplicates in a batch."""

from boom_jax.data.batcher import Batcher, query_text
from boom_jax.data.records import Example, TrainDataset
from boom_jax.tokenization import TextTokenizer, load_tokenizer


def _dataset():
    """40 examples whose positives repeat every 10 (and queries every 20): duplicates galore."""
    examples = [Example("d", i, f"query {i % 20}", (f"passage {i % 10}",), (f"other {i}",)) for i in range(40)]
    return TrainDataset("d", "retrieval", examples)


def _texts(batcher, planned):
    return [t for name, i in planned.items for t in {query_text(batcher._by_name[name].examples[i]),
                                                      *batcher._by_name[name].examples[i].pos}]


def test_no_duplicates_plan(minilm_path):
    tok = TextTokenizer(load_tokenizer(minilm_path), 16)
    plain = Batcher([_dataset()], tok, tok, batch_size=8, seed=3, show_progress=False)
    assert any(len(set(_texts(plain, b))) < len(_texts(plain, b)) for b in plain.plan(0))
    batcher = Batcher([_dataset()], tok, tok, batch_size=8, seed=3, no_duplicates=True, show_progress=False)
    plan = batcher.plan(0)
    assert len(plan) >= 3  # 10 distinct positives: at most one batch of 8 per 8 distinct ones, refilled
    seen = set()
    for planned in plan:
        texts = _texts(batcher, planned)
        assert len(set(texts)) == len(texts) and len(planned.items) == 8
        assert not seen & set(planned.items)
        seen |= set(planned.items)
    assert Batcher([_dataset()], tok, tok, batch_size=8, seed=3, no_duplicates=True,
                   show_progress=False).plan(0) == plan
    batch = next(batcher)
    assert batch["query_ids"].shape[0] == 8

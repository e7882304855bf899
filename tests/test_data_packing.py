"""Sequence packing: planner invariants (every text once, budgets, determinism, shard-local slot maps),
the packing batcher (same texts as the padded one, exact resume, token store path, multi-host slices)
and the packed Encoder (equal to the padded one on all-MiniLM-L6-v2's real weights)."""

import numpy as np
import pytest

from boom_jax.data.batcher import Batcher, batch_tokens
from boom_jax.packing import pack_padded, pad_packed_rows, row_buckets, unpack_reference
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from tests.test_data_batcher import DATASETS, batch_digest


def _texts(seed, n, t):
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 6, size=n) + 1, t)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    return rng.integers(1, 1000, size=(n, t)).astype(np.int32) * mask, mask


def _real(ids, mask):
    return [row[m > 0] for row, m in zip(ids, mask)]


def test_planner_invariants():
    ids, mask = _texts(0, 96, 16)
    side = pack_padded(ids, mask, row_length=20, max_segments=5, shards=4, pad_id=0, row_multiple=2)
    again = pack_padded(ids, mask, row_length=20, max_segments=5, shards=4, pad_id=0, row_multiple=2)
    assert all(np.array_equal(side[k], again[k]) for k in side)  # deterministic
    rows, length = side["ids"].shape
    per_shard = rows // 4
    assert length == 20 and rows % 4 == 0 and per_shard % 2 == 0 and per_shard in row_buckets(24, 4, 2)
    assert side["lengths"].shape == (rows, 5) and side["lengths"].sum(axis=1).max() <= 20  # no row over budget
    # every text exactly once, intact, where its index says (local to its shard's rows)
    assert [list(t) for t in unpack_reference(side, shards=4)] == [list(t) for t in _real(ids, mask)]
    flat = side["index"]
    assert flat.max() < per_shard * 5
    shard_rows = [set(range(k * per_shard, (k + 1) * per_shard)) for k in range(4)]
    for i, f in enumerate(flat):
        row, slot = (i // 24) * per_shard + f // 5, f % 5
        assert row in shard_rows[i // 24]
        assert side["lengths"][row, slot] == mask[i].sum()
        assert np.count_nonzero(side["segments"][row] == slot + 1) == mask[i].sum()
    assert len(set(zip(range(96), flat)) ) == 96 and all(len(set(flat[k * 24:(k + 1) * 24])) == 24 for k in range(4))
    # segments are contiguous runs 1, 2, ... then padding; pads carry the pad id
    for seg, tok in zip(side["segments"], side["ids"]):
        real = seg[seg > 0]
        assert np.all(np.diff(real) >= 0) and np.all(seg[len(real):] == 0) and np.all(tok[seg == 0] == 0)
    # packing really saves positions
    assert side["segments"].size < mask.size and (side["segments"] > 0).sum() == mask.sum()
    # grown to a larger row count per shard (stacked members): same texts, indices unchanged
    grown = pad_packed_rows(side, 4, per_shard + 2)
    assert grown["ids"].shape[0] == rows + 8
    assert [list(t) for t in unpack_reference(grown, shards=4)] == [list(t) for t in _real(ids, mask)]
    with pytest.raises(ValueError, match=r"text lengths must be in \[1, 8\]"):
        pack_padded(ids, mask, row_length=8, max_segments=5)
    with pytest.raises(ValueError, match="96 texts cannot be split into 5 equal shards"):
        pack_padded(ids, mask, row_length=20, max_segments=5, shards=5)


@pytest.fixture(scope="module")
def tokenizers(minilm_path):
    tok = load_tokenizer(minilm_path)
    return TextTokenizer(tok, max_length=32), TextTokenizer(tok, max_length=64)


def _packed_texts(batch, side):
    shards = batch["pack_shards"]
    return [list(t) for t in unpack_reference({k: batch[f"{side}_{k}"] for k in ("ids", "segments", "lengths", "index")},
                                              shards)]


def test_packing_batcher_same_texts_resume_and_store(tokenizers, tmp_path):
    qtok, ptok = tokenizers
    args = dict(batch_size=4, group_size=3, seed=1, num_epochs=2)
    plain = list(Batcher(DATASETS, qtok, ptok, **args))
    packed = list(Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, **args))
    assert len(packed) == len(plain) == 22
    for a, b in zip(plain, packed):
        assert _packed_texts(b, "query") == [list(t) for t in _real(a["query_ids"], a["query_mask"])]
        assert _packed_texts(b, "passage") == [list(t) for t in _real(a["passage_ids"], a["passage_mask"])]
        assert b["query_ids"].shape[1] == 32 and b["passage_ids"].shape[1] == 64 and b["pack_shards"] == 2
        assert b["query_lengths"].shape[1] == 2 and b["passage_lengths"].shape[1] == 6  # min(texts/shard, L // 8)
        assert batch_tokens(b)[0] == batch_tokens(a)[0] and batch_tokens(b)[1] <= batch_tokens(a)[1]
        assert b["dataset_id"] == a["dataset_id"] and b["in_batch_negatives"] == a["in_batch_negatives"]

    # exact resume: a batcher restored mid-run yields the remaining packed batches bit for bit
    first = Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, token_cache_dir=str(tmp_path), **args)
    for _ in range(13):
        next(first)
    resumed = Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, token_cache_dir=str(tmp_path), **args)
    resumed.restore(first.state())
    rest = list(resumed)
    assert [batch_digest(b) for b in rest] == [batch_digest(b) for b in packed[13:]]  # store path == lazy path

    # two hosts: each packs its own half; together they hold the one-host batch's texts
    hosts = [list(Batcher(DATASETS, qtok, ptok, packing=True, process_index=i, process_count=2, **args))
             for i in range(2)]
    for one, h0, h1 in zip(packed, *hosts):
        assert _packed_texts(h0, "passage") + _packed_texts(h1, "passage") == _packed_texts(one, "passage")
    with pytest.raises(ValueError, match="pack_shards=3: this host's 4 queries"):
        Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=3, **args)
    with pytest.raises(ValueError, match="pack_length=16 is below the tokenizer's max_length 32"):
        next(Batcher(DATASETS, qtok, ptok, packing=True, pack_length=16, **args))


def test_packed_encoder_equals_padded_on_minilm(minilm_path):
    from boom_jax.data.builtin import builtin_train_datasets
    from boom_jax.hf.encoders import load_encoder

    encoder = load_encoder(minilm_path)
    texts = [t for d in builtin_train_datasets(limit=12) for e in d.examples for t in (e.query, e.pos[0])]
    texts = texts[:40] + ["a b " * 200]  # mixed lengths, one truncated to the max length
    packed = encoder.encode(texts, batch_size=16)
    encoder.packing = False
    padded = encoder.encode(texts, batch_size=16)
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    assert packed.shape == (41, 384) and np.allclose(np.linalg.norm(packed, axis=1), 1, atol=1e-5)

"""Adaptive row widths of packed sides: the width choice, growing a side to a wider row / more slots (the
stacked members' one shape), and the packing batcher with pack_adaptive (widths from the global batch,
same texts as the padded batcher, exact resume)."""

import functools

import jax
import numpy as np
import pytest

from boom_jax.data.batcher import Batcher, batch_tokens
from boom_jax.models import ModelConfig, build_model, init_params
from boom_jax.packing import pack_padded, pad_packed_rows, plan_encode_calls, row_width, unpack_reference, width_buckets
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from boom_jax.training.step import gather_segments
from tests.test_data_batcher import DATASETS, batch_digest


def _texts(seed, n, t):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    return rng.integers(1, 60, size=(n, t)).astype(np.int32) * mask, mask


def _real(ids, mask):
    return [list(row[m > 0]) for row, m in zip(ids, mask)]


def test_row_width_is_the_smallest_width_holding_the_longest_text():
    widths = width_buckets((16, 32, 64, 128, 256, 512), 512)
    assert widths == (16, 32, 64, 128, 256, 512)
    assert [row_width(n, widths) for n in (1, 16, 17, 55, 129, 365, 512)] == [16, 16, 32, 64, 256, 512, 512]
    assert row_width(600, widths) == 512  # never wider than the budget
    # a budget between buckets ends the widths; buckets above it are dropped
    assert width_buckets((16, 32, 64, 128), 100) == (16, 32, 64, 100)
    assert width_buckets((64, 16, 32, 16), 24) == (16, 24)
    with pytest.raises(ValueError, match="ascending"):
        row_width(5, (32, 16))


def test_grown_width_and_slots_keep_every_text_and_embedding():
    ids, mask = _texts(0, 12, 10)
    side = pack_padded(ids, mask, row_length=16, max_segments=3, shards=2)
    grown = pad_packed_rows(side, 2, side["ids"].shape[0] // 2 + 1, row_length=40, max_segments=7)
    assert grown["ids"].shape == (side["ids"].shape[0] + 2, 40) and grown["lengths"].shape[1] == 7
    assert [list(t) for t in unpack_reference(grown, shards=2)] == _real(ids, mask)
    assert (grown["segments"] > 0).sum() == mask.sum() and np.all(grown["ids"][grown["segments"] == 0] == 0)
    # the model embeds every text the same in the narrow and the grown layout
    cfg = ModelConfig(arch="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, has_pooler=False, pooling="mean",
                      normalize=True)
    module, params = build_model(cfg), init_params(cfg, jax.random.PRNGKey(0))

    @functools.partial(jax.jit, static_argnums=3)
    def rows_of(p, ids, segments, slots):
        return module.apply({"params": p}, ids, segments, deterministic=True, num_segments=slots)

    def embed(s):
        rows = rows_of(params, s["ids"], s["segments"], s["lengths"].shape[1])
        return np.asarray(gather_segments(rows, s["index"], 2))

    np.testing.assert_allclose(embed(grown), embed(side), atol=1e-6)
    with pytest.raises(ValueError, match="cannot shrink"):
        pad_packed_rows(side, 2, side["ids"].shape[0] // 2, row_length=8)


@pytest.fixture(scope="module")
def tokenizers(minilm_path):
    tok = load_tokenizer(minilm_path)
    return TextTokenizer(tok, max_length=32), TextTokenizer(tok, max_length=64)


def _packed_texts(batch, side):
    return [list(t) for t in unpack_reference({k: batch[f"{side}_{k}"] for k in ("ids", "segments", "lengths", "index")},
                                              batch["pack_shards"])]


def test_adaptive_batcher_widths_texts_resume_and_hosts(tokenizers, tmp_path):
    qtok, ptok = tokenizers
    args = dict(batch_size=4, group_size=3, seed=1, num_epochs=1)
    plain = list(Batcher(DATASETS, qtok, ptok, **args))
    fixed = list(Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, **args))
    adaptive = list(Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, pack_adaptive=True, **args))
    assert len(adaptive) == len(plain)
    for a, f, b in zip(plain, fixed, adaptive):
        for side, tok in (("query", qtok), ("passage", ptok)):
            longest = int(a[f"{side}_mask"].sum(axis=1).max())
            width = next(w for w in tok.buckets if w >= longest)
            assert b[f"{side}_ids"].shape[1] == width < f[f"{side}_ids"].shape[1]  # short texts: narrow rows
            assert b[f"{side}_lengths"].shape[1] == min(b[f"{side}_index"].shape[0] // 2, width // 8)
            assert _packed_texts(b, side) == _real(a[f"{side}_ids"], a[f"{side}_mask"])
        assert batch_tokens(b)[0] == batch_tokens(a)[0]

        def scores(batch):  # attention scores per head and layer: rows x width^2 per side
            return sum(batch[f"{s}_ids"].shape[0] * batch[f"{s}_ids"].shape[1] ** 2 for s in ("query", "passage"))

        assert scores(b) < scores(f)
    # exact resume (token store path == lazy path)
    first = Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, pack_adaptive=True,
                    token_cache_dir=str(tmp_path), **args)
    for _ in range(5):
        next(first)
    resumed = Batcher(DATASETS, qtok, ptok, packing=True, pack_shards=2, pack_adaptive=True,
                      token_cache_dir=str(tmp_path), **args)
    resumed.restore(first.state())
    assert [batch_digest(b) for b in resumed] == [batch_digest(b) for b in adaptive[5:]]
    # two hosts: widths come from the global batch, so both hosts yield the one-host widths
    hosts = [list(Batcher(DATASETS, qtok, ptok, packing=True, pack_adaptive=True, process_index=i,
                          process_count=2, **args)) for i in range(2)]
    for one, h0, h1 in zip(adaptive, *hosts):
        for side in ("query", "passage"):
            assert h0[f"{side}_ids"].shape[1] == h1[f"{side}_ids"].shape[1] == one[f"{side}_ids"].shape[1]


def test_encode_call_plan_covers_every_text_within_budgets():
    rng = np.random.default_rng(3)
    lengths = np.concatenate([rng.integers(1, 129, size=300), rng.integers(129, 400, size=20)])
    buckets = (16, 32, 64, 128, 256, 512)
    calls = plan_encode_calls(lengths, 32, 128, buckets, row_multiple=2)
    seen = np.concatenate([c.texts for c in calls])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every text exactly once
    assert {c.row_length for c in calls} == {128, 512}  # short texts never share the long texts' width
    for c in calls:
        assert np.all(lengths[c.texts] <= c.row_length) and c.segments == c.row_length // 8
        assert c.rows % 2 == 0 and c.rows * c.row_length <= max(32 * 64, 2 * c.row_length)  # the call's budget
        assert c.row.max() < c.rows and c.slot.max() < c.segments
        used = np.zeros((c.rows, c.row_length), int)  # no two texts overlap, none runs past its row
        for n, r, o in zip(lengths[c.texts], c.row, c.offset):
            used[r, o:o + n] += 1
            assert o + n <= c.row_length
        assert used.max() == 1
    # all short texts: one width, the bucket of the longest when below pack_length
    assert {c.row_length for c in plan_encode_calls([3, 9, 20], 32, 128, buckets)} == {32}
    assert plan_encode_calls([], 32, 128, buckets) == []

"""Token store: ids equal to the TextTokenizer's, identical batches with and without it, atomic reuse."""

import hashlib
import inspect
import os

import numpy as np
import pytest

from boom_jax.data.batcher import Batcher, query_text
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.token_store import (
    TokenStore,
    _rust_encoder,
    cap_chars,
    encode_texts,
    load_or_build_store,
    whitespace_cut,
    whitespace_cut_is_exact,
)
from boom_jax.tokenization import TextTokenizer, load_tokenizer
from tests.helpers_tiny_models import make_tiny_qwen3_tokenizer


@pytest.fixture(scope="module")
def corpus():
    """Built-in training sets (80 examples each) and a text sample: their queries and passages, the 40
    longest passages of the whole corpus, texts past the character cap, odd whitespace and unicode."""
    full = builtin_train_datasets()
    longest = sorted({p for d in full for e in d.examples for p in e.pos}, key=len)[-40:]
    small = builtin_train_datasets(limit=80)
    source = inspect.getsource(inspect)
    texts = [query_text(e) for d in small for e in d.examples]
    texts += [t for d in small for e in d.examples for t in (*e.pos, *e.neg)]
    texts += longest + [source[i * 5000:i * 5000 + 9000] for i in range(4)]
    texts += ["", " ", "tabs\tand\nnew lines  ", "Ünïcödé — ‘quotes’ 数据 🙂 e\u0301", "x" * 3000]
    return small, list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return make_tiny_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3_tok"))


def assert_store_matches(text_tokenizer, texts):
    flat, offsets = encode_texts(text_tokenizer, texts)
    expected = text_tokenizer.token_ids(cap_chars(texts, text_tokenizer))
    assert offsets[-1] == len(flat) == sum(len(r) for r in expected)
    assert [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == expected
    store = TokenStore(texts, flat, offsets, text_tokenizer)
    picks = [[5, 0, len(texts) - 1], list(range(len(texts) - 9, len(texts))), list(range(40))]
    for rows in picks:
        batch = [texts[i] for i in rows]
        got_ids, got_mask = store.tokenize(batch)
        want_ids, want_mask = text_tokenizer.pad(text_tokenizer.token_ids(cap_chars(batch, text_tokenizer)))
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_mask, want_mask)
        assert got_ids.dtype == got_mask.dtype == np.int32


def test_ids_equal_the_text_tokenizer_minilm(minilm, corpus):
    _, texts = corpus
    assert_store_matches(TextTokenizer(minilm, 128), texts)
    assert_store_matches(TextTokenizer(minilm, 32, padding_side="left", buckets=(32,)), texts)


QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen_split_variant(fast):
    """The tiny tokenizer with Qwen2/Qwen3's pre-tokenizer: the split regex, then byte-level."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(fast.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=fast.eos_token, pad_token=fast.pad_token,
                                   padding_side="left")


def test_ids_equal_the_text_tokenizer_qwen3(qwen3, corpus):
    _, texts = corpus
    assert_store_matches(TextTokenizer(qwen3, 64, padding_side="left", append_eos=True), texts)
    assert_store_matches(TextTokenizer(qwen_split_variant(qwen3), 48, padding_side="left", append_eos=True), texts)


def test_whitespace_cut_applies_to_these_tokenizers(minilm, qwen3, corpus):
    """The cold-path cut is on for BERT, byte-level and Qwen split pre-tokenizers and cuts corpus texts."""
    import json

    for fast in (minilm, qwen3, qwen_split_variant(qwen3)):
        assert whitespace_cut_is_exact(json.loads(_rust_encoder(TextTokenizer(fast, 32)).to_str()))
    assert not whitespace_cut_is_exact({"normalizer": {"type": "Replace"}, "pre_tokenizer": None})
    assert not whitespace_cut_is_exact({"normalizer": None, "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}}})
    _, texts = corpus
    cut = whitespace_cut(texts, 32)
    changed = [(a, b) for a, b in zip(cut, texts) if a is not b]
    assert len(changed) > 100 and all(b.startswith(a) and b[len(a)] == " " and not a[-1].isspace() for a, b in changed)


def digests(batcher):
    out = []
    for batch in batcher:
        h = hashlib.sha256()
        for key in sorted(batch):
            h.update(key.encode())
            h.update(np.asarray(batch[key]).tobytes())
        out.append(h.hexdigest())
    return out


def test_batches_identical_with_and_without_store_and_reused(minilm, corpus, tmp_path):
    datasets, _ = corpus
    qtok, ptok = TextTokenizer(minilm, 48), TextTokenizer(minilm, 96)
    make = lambda cache_dir: Batcher(datasets, qtok, ptok, batch_size=16, group_size=4, seed=2,  # noqa: E731
                                     token_cache_dir=cache_dir, show_progress=False)
    plain = digests(make(None))
    assert len(plain) == sum(len(d) // 16 for d in datasets) and len(set(plain)) == len(plain)
    cache = tmp_path / "tokens"
    cold = make(str(cache))
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and all(f.startswith("tokens-") and f.endswith(".npz") for f in files)  # no temp left
    assert digests(cold) == plain
    stamps = {f: os.stat(cache / f).st_mtime_ns for f in files}
    warm = make(str(cache))
    assert {f: os.stat(cache / f).st_mtime_ns for f in files} == stamps  # loaded, not rebuilt
    assert digests(warm) == plain
    # Another max_length is another store; a damaged file is rebuilt and replaced.
    Batcher(datasets, TextTokenizer(minilm, 40), ptok, batch_size=16, seed=2, token_cache_dir=str(cache),
            show_progress=False)
    assert len(os.listdir(cache)) == 3
    (cache / files[0]).write_bytes(b"not a numpy file")
    assert digests(make(str(cache))) == plain
    assert len(os.listdir(cache)) == 3 and (cache / files[0]).stat().st_size > 100


def test_store_refuses_unknown_text_and_bad_offsets(minilm, tmp_path):
    tok = TextTokenizer(minilm, 16)
    store = load_or_build_store(["alpha beta", "gamma", "alpha beta"], tok, str(tmp_path), progress=False)
    assert len(store) == 2 and "gamma" in store
    np.testing.assert_array_equal(store.ids("gamma"), tok.token_ids(["gamma"])[0])
    with pytest.raises(KeyError, match="text not in the token store: 'delta'"):
        store.tokenize(["gamma", "delta"])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    unsaved = load_or_build_store(["gamma"], tok, str(blocker / "sub"), progress=False)  # cannot save: still works
    np.testing.assert_array_equal(unsaved.ids("gamma"), store.ids("gamma"))
    with pytest.raises(ValueError, match="2 texts has 2 offsets"):
        TokenStore(["a", "b"], np.zeros(3, np.int32), np.array([0, 3]), tok)

"""TextTokenizer: same ids as the folder's tokenizer, length buckets, truncation, padding sides, EOS."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from boom_jax.tokenization import load_tokenizer

    return load_tokenizer(minilm_path)


def test_default_buckets_and_bucket_choice():
    from boom_jax.tokenization import bucket_for, default_buckets

    assert default_buckets(256) == (16, 32, 64, 128, 256)
    assert default_buckets(100) == (16, 32, 64, 100)
    assert [bucket_for(n, (16, 32, 64)) for n in (1, 16, 17, 64, 500)] == [16, 16, 32, 64, 64]


def test_ids_match_the_hf_tokenizer_and_pad_to_a_bucket(tokenizer):
    from boom_jax.tokenization import TextTokenizer

    texts = ["Hello world!", "", "Ünïcödé 🚀 text with a few more words in it"]
    tok = TextTokenizer(tokenizer, max_length=64)
    ids, mask = tok(texts)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (3, 16)
    for row, m, text in zip(ids, mask, texts):
        expected = tokenizer(text)["input_ids"]
        assert row[: m.sum()].tolist() == expected and m[: len(expected)].all() and not m[len(expected):].any()
        assert (row[len(expected):] == tokenizer.pad_token_id).all()
    assert tok(["word " * 20])[0].shape == (1, 32)


def test_truncation_left_padding_and_eos(tokenizer):
    from boom_jax.tokenization import TextTokenizer

    long_text = "word " * 500
    ids, mask = TextTokenizer(tokenizer, max_length=48)([long_text, "hi"])
    assert ids.shape == (2, 48) and mask[0].all()
    assert ids[0, -1] == tokenizer.sep_token_id  # special tokens survive truncation

    left = TextTokenizer(tokenizer, max_length=48, padding_side="left")
    lids, lmask = left(["hi", "hello there"])
    n = int(lmask[0].sum())
    assert lmask[0, -n:].all() and not lmask[0, :-n].any()
    assert lids[0, -n:].tolist() == tokenizer("hi")["input_ids"]

    with pytest.raises(ValueError, match="no EOS token"):
        TextTokenizer(tokenizer, max_length=48, append_eos=True)
    from boom_jax.tokenization import load_tokenizer

    with_eos = load_tokenizer(tokenizer.name_or_path)
    with_eos.eos_token = "[SEP]"
    rows = TextTokenizer(with_eos, max_length=48, append_eos=True).token_ids(["hi", long_text])
    assert rows[0] == tokenizer("hi")["input_ids"]  # already ends with the EOS ([SEP]): not doubled
    assert len(rows[1]) == 48 and rows[1][-1] == tokenizer.sep_token_id


def test_bad_input_is_named(tokenizer, tmp_path):
    from boom_jax.tokenization import TextTokenizer, load_tokenizer

    tok = TextTokenizer(tokenizer, max_length=32)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tok(["ok", 3])
    with pytest.raises(TypeError, match="not one string"):
        tok("one string")
    with pytest.raises(ValueError, match="padding_side='middle'"):
        TextTokenizer(tokenizer, max_length=32, padding_side="middle")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")

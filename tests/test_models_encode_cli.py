"""boom_jax.encode: a text file in, an .npy of embeddings out (same as Encoder.encode), errors named."""

import json

import numpy as np
import pytest


def test_encode_file_matches_encoder(minilm_path, tmp_path):
    from boom_jax.encode import encode_file
    from boom_jax.hf.encoders import load_encoder

    texts = ["A man is eating food.", "", "A man is eating a piece of bread."]
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
    out = tmp_path / "sub" / "out.npy"
    encode_file(minilm_path, str(txt), str(out), prompt="query: ", batch_size=2)
    got = np.load(out)
    want = load_encoder(minilm_path).encode(texts, prompt="query: ", batch_size=2)
    assert got.dtype == np.float32 and got.shape == (3, 384)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.npy"]  # no temp file left

    with pytest.raises(FileExistsError, match="out.npy"):
        encode_file(minilm_path, str(jsonl), str(out))
    encode_file(minilm_path, str(jsonl), str(out), prompt="query: ", batch_size=2, overwrite=True)
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_bad_input_file_is_named(tmp_path):
    from boom_jax.encode import read_texts

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "wrong field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        read_texts(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_texts(str(tmp_path / "missing.txt"))

"""Export to a Hugging Face + sentence-transformers folder: round trip with real MiniLM weights,
pooling/normalize variants, and the refusals (bad checkpoints, existing output) that write nothing."""

import io
import json
import logging
import os
import shutil

import numpy as np
import pytest

TEXTS = ["A man is eating food.", "Ünïcödé and emoji 🚀", "", "What is the capital of France?"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _load_with_captured_logs(folder):
    """AutoModel + SentenceTransformer of `folder`, with everything transformers logged or warned."""
    import warnings

    import transformers
    from sentence_transformers import SentenceTransformer

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    transformers.logging.add_handler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
            st = SentenceTransformer(folder, device="cpu")
    finally:
        transformers.logging.remove_handler(handler)
    text = buf.getvalue() + "\n".join(str(w.message) for w in caught)
    return model, info, st, text


def test_minilm_round_trip(minilm_path, tmp_path):
    from boom_jax.hf import export_sentence_transformers, load_hf_model
    from boom_jax.models.encoder import Encoder
    from boom_jax.tokenization import load_tokenizer

    cfg, params = load_hf_model(minilm_path)
    prompts = {"query": "Instruct: Given a question, retrieve passages\nQuery: ", "document": ""}
    cfg = cfg.replace(prompts=prompts)
    out = tmp_path / "exported"
    export_sentence_transformers(params, cfg, minilm_path, out)

    names = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json",
            "1_Pooling", "2_Normalize", "config_sentence_transformers.json", "README.md"} <= names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp folder left
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]

    _, info, st, logs = _load_with_captured_logs(str(out))
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert "MISSING" not in logs and "UNEXPECTED" not in logs and "newly initialized" not in logs, logs
    assert st.prompts == prompts and st.similarity_fn_name == "cosine" and st.max_seq_length == 256

    encoder = Encoder(cfg, params, load_tokenizer(out))
    for kwargs in ({}, {"prompt_name": "query"}):
        ours = encoder.encode(TEXTS, **kwargs)
        ref = st.encode(TEXTS, convert_to_numpy=True, **kwargs)
        assert np.abs(ours - ref).max() <= 1e-5, kwargs

    cfg2, params2 = load_hf_model(out)
    assert (cfg2.pooling, cfg2.normalize, cfg2.max_seq_length, cfg2.prompts) == ("mean", True, 256, prompts)
    np.testing.assert_array_equal(params2["embeddings"]["word_embeddings"]["embedding"],
                                  params["embeddings"]["word_embeddings"]["embedding"])


@pytest.fixture(scope="module")
def tiny_folder(minilm_path, tmp_path_factory):
    """A random BertModel (MiniLM vocabulary) saved by transformers, with MiniLM's tokenizer files."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny") / "hf"
    BertModel(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_path, name), path / name)
    return str(path)


def test_pooling_and_normalize_are_kept(tiny_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    from boom_jax.hf import export_sentence_transformers, load_hf_model
    from boom_jax.models.encoder import Encoder
    from boom_jax.tokenization import load_tokenizer

    cfg, params = load_hf_model(tiny_folder)
    assert (cfg.pooling, cfg.normalize, cfg.max_seq_length) == ("cls", False, 64)  # no ST files: BERT defaults
    for pooling, normalize in (("cls", False), ("lasttoken", True)):
        variant = cfg.replace(pooling=pooling, normalize=normalize)
        out = tmp_path / pooling
        export_sentence_transformers(params, variant, tiny_folder, out)
        assert (out / "2_Normalize").is_dir() == normalize
        st = SentenceTransformer(str(out), device="cpu")
        ours = Encoder(variant, params, load_tokenizer(out)).encode(TEXTS)
        ref = st.encode(TEXTS, convert_to_numpy=True)
        assert np.abs(ours - ref).max() <= 1e-5, pooling
        assert load_hf_model(out)[0].pooling == pooling


def _broken_copy(src, dst, edit_tensors=None, edit_config=None):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    if edit_tensors:
        tensors = load_file(os.path.join(dst, "model.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    if edit_config:
        path = os.path.join(dst, "config.json")
        with open(path) as f:
            config = json.load(f)
        edit_config(config)
        with open(path, "w") as f:
            json.dump(config, f)
    return str(dst)


def _drop(name):
    return lambda t: t.pop(name)


def _reshape(name):
    def edit(t):
        t[name] = np.zeros((3, 3), np.float32)
    return edit


def _add(name):
    def edit(t):
        t[name] = np.zeros((2,), np.float32)
    return edit


def _no_config(folder):
    os.remove(os.path.join(folder, "config.json"))


@pytest.mark.parametrize(
    "case, tensors, config, message",
    [
        ("no_config", None, None, "config.json"),
        ("unsupported", None, lambda c: c.update(model_type="gpt2"), "unsupported model_type 'gpt2'"),
        ("missing", _drop("encoder.layer.1.output.dense.bias"), None,
         "missing tensors (1): encoder.layer.1.output.dense.bias"),
        ("shape", _reshape("encoder.layer.0.attention.self.key.weight"), None,
         "wrong shape for encoder.layer.0.attention.self.key.weight: got (3, 3), expected (32, 32)"),
        ("unexpected", _add("cls.predictions.bias"), None, "unexpected tensors (1): cls.predictions.bias"),
    ],
)
def test_bad_checkpoint_is_refused_and_nothing_written(tiny_folder, tmp_path, case, tensors, config, message):
    from boom_jax.export import export_checkpoint

    src = _broken_copy(tiny_folder, tmp_path / "src", tensors, config)
    if case == "no_config":
        _no_config(src)
    out = tmp_path / "out"
    with pytest.raises(Exception) as err:
        export_checkpoint(src, str(out))
    assert message in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no output, no temp folder


def test_existing_output_is_refused_unless_overwrite(tiny_folder, tmp_path):
    from boom_jax.export import export_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not empty"):
        export_checkpoint(tiny_folder, str(out))
    assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    export_checkpoint(tiny_folder, str(out), overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the old folder was removed after the swap


def test_sharded_checkpoint_loads_like_a_single_file(tiny_folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    from boom_jax.hf import load_hf_model

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_folder, sharded)
    tensors = load_file(sharded / "model.safetensors")
    os.remove(sharded / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, sharded / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: s for s, ns in shards.items() for n in ns}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    _, single = load_hf_model(tiny_folder)
    _, from_shards = load_hf_model(sharded)
    for path in (("pooler", "kernel"), ("embeddings", "word_embeddings", "embedding")):
        a, b = single, from_shards
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_array_equal(a, b)

    os.remove(sharded / "model-00002-of-00002.safetensors")
    with pytest.raises(Exception, match="shard model-00002-of-00002.safetensors does not exist"):
        load_hf_model(sharded)

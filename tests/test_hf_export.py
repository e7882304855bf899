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


def _code_blocks(markdown: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


PROVENANCE = {
    "kind": "merged", "name": "tiny-bag", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "license": "apache-2.0", "language": ["en"],
    "training": {"datasets": [{"name": "web", "task_type": "retrieval", "examples": 12}], "schedule": "bls",
                 "batch_size": 8, "steps": 3, "examples": 24, "hardware": {"platform": "cpu", "device_count": 1}},
    "merge": {"method": "ties", "params": {"density": 0.5, "lambda_": 1.0}, "weights": [0.3, 0.7],
              "members": [{"name": "r050", "ratio": 0.5, "seed": 11, "manifest_sha256": "ab12", "dev_score": 0.41,
                           "export": "members/r050/export"},
                          {"name": "r100", "ratio": 1.0, "seed": 12, "manifest_sha256": "cd34", "dev_score": 0.45,
                           "export": "members/r100/export"}]},
    "evaluation": {"dev": {"web_retrieval": 0.5, "topics": 0.25}, "task_types": {"topics": "classification"},
                   "metrics": {"topics": "accuracy"}},
}


@pytest.mark.parametrize("kind", ["bert", "qwen3"])
def test_card_validates_offline_and_its_snippets_run_on_the_folder(kind, tmp_path):
    from huggingface_hub import ModelCard

    from boom_jax.hf import export_sentence_transformers, load_hf_model
    from boom_jax.hf.model_card import PLACEHOLDER_MODEL_ID
    from tests.helpers_tiny_models import make_tiny_bert_folder, make_tiny_qwen3_folder

    src = (make_tiny_bert_folder if kind == "bert" else make_tiny_qwen3_folder)(tmp_path / "src")
    cfg, params = load_hf_model(src)
    cfg = cfg.replace(normalize=True, prompts={"query": "query: "})
    out = tmp_path / "export"
    export_sentence_transformers(params, cfg, src, out, provenance=PROVENANCE)

    card = ModelCard.load(out / "README.md")  # huggingface_hub parses and validates the metadata, offline
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license, data.language) == (
        "sentence-transformers", "sentence-similarity", "apache-2.0", ["en"])
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "dataset_size:12" in data.tags
    scores = {r.dataset_type: (r.task_type, r.metric_type, r.metric_value) for r in data.eval_results}
    assert scores == {"boom_jax/builtin/web_retrieval": ("Retrieval", "ndcg_at_10", 0.5),
                      "boom_jax/builtin/topics": ("Classification", "accuracy", 0.25)}
    assert "| r050 | 0.5 | 11 | 0.3 |" in card.text and "| **merged** |" in card.text and "0.375" in card.text
    assert "merge_method: ties" in card.text and "lambda: 1.0" in card.text and '"members/r100/export"' in card.text
    assert json.loads((out / "boom.json").read_text())["merge"]["members"][1]["seed"] == 12

    st_code, hf_code = _code_blocks(card.text)
    embeddings = {}
    for name, code in (("st", st_code), ("hf", hf_code)):
        namespace = {}
        exec(code.replace(PLACEHOLDER_MODEL_ID, str(out)), namespace)
        embeddings[name] = np.asarray(namespace["embeddings"], dtype=np.float32)
    assert embeddings["st"].shape == (2, cfg.embedding_dim)
    assert np.abs(embeddings["st"] - embeddings["hf"]).max() <= 1e-5

    _, info, st, logs = _load_with_captured_logs(str(out))
    assert logs.strip() == "", logs  # no warning of any kind while loading the export


def test_similarity_is_kept_and_dot_models_stay_dot(tiny_folder, tmp_path):
    from boom_jax.hf import export_sentence_transformers, load_hf_model

    cfg, params = load_hf_model(tiny_folder)
    out = tmp_path / "dot"
    export_sentence_transformers(params, cfg.replace(similarity="dot"), tiny_folder, out)
    _, _, st, logs = _load_with_captured_logs(str(out))
    assert st.similarity_fn_name == "dot" and logs.strip() == "", logs
    assert load_hf_model(out)[0].similarity == "dot"
    again = tmp_path / "again"
    cfg2, params2 = load_hf_model(out)
    export_sentence_transformers(params2, cfg2, out, again)
    assert json.loads((again / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"


def test_unsupported_modules_are_refused_by_name(tiny_folder, tmp_path):
    from boom_jax.hf import HFFolderError, export_sentence_transformers, load_hf_model

    cfg, params = load_hf_model(tiny_folder)
    folder = tmp_path / "st"
    export_sentence_transformers(params, cfg, tiny_folder, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(HFFolderError, match=r"modules\.json: module 2 \(2_Dense\) is 'sentence_transformers\.models\.Dense'"):
        load_hf_model(folder)
    from boom_jax.export import export_checkpoint

    with pytest.raises(HFFolderError, match="Dense"):
        export_checkpoint(str(folder), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_remote_code_keys_are_not_copied(tiny_folder, tmp_path):
    from boom_jax.hf import export_sentence_transformers, load_hf_model

    src = _broken_copy(tiny_folder, tmp_path / "remote", edit_config=lambda c: c.update(
        auto_map={"AutoModel": "modeling_custom.CustomModel"}, trust_remote_code=True))
    cfg, params = load_hf_model(src)
    out = tmp_path / "out"
    export_sentence_transformers(params, cfg, src, out)
    exported = json.loads((out / "config.json").read_text())
    assert "auto_map" not in exported and "trust_remote_code" not in exported
    assert exported["architectures"] == ["BertModel"]


def test_exporting_a_workdir_carries_its_runs_provenance(tiny_folder, tmp_path):
    from huggingface_hub import ModelCard

    from boom_jax.export import export_checkpoint
    from boom_jax.hf import load_hf_model
    from boom_jax.model_io import save_model_folder

    cfg, params = load_hf_model(tiny_folder)
    workdir = tmp_path / "run"
    save_model_folder(str(workdir / "model"), cfg, params, tiny_folder)
    (workdir / "boom.json").write_text(json.dumps({**PROVENANCE, "kind": "trained", "name": "my-run"}))
    out = export_checkpoint(str(workdir), str(tmp_path / "out"))
    assert ModelCard.load(os.path.join(out, "README.md")).data.model_name == "my-run"
    assert json.loads((tmp_path / "out" / "boom.json").read_text())["kind"] == "trained"

"""Model folders: atomic save, load (model folder, train workdir, HF folder), partial reads, errors."""

import os

import ml_dtypes
import numpy as np
import pytest

from boom_jax import model_io
from boom_jax.model_io import ModelFolderError
from boom_jax.models.config import ModelConfig

TINY = ModelConfig(arch="bert", vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embeddings": {"word_embeddings": {"embedding": rng.normal(size=(50, 8)).astype(np.float32)}},
        "encoder": {"layer_0": {"attention": {"kernel": rng.normal(size=(8, 8)).astype(np.float32)}}},
        "head": {"scale": rng.normal(size=(8,)).astype(ml_dtypes.bfloat16)},
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_path):
    folder = str(tmp_path_factory.mktemp("io") / "model")
    params = _params()
    model_io.save_model_folder(folder, TINY, params, minilm_path, readme="tiny test model")
    return folder, params


def _assert_trees_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_trees_equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(np.asarray(a[k], np.float32), np.asarray(b[k], np.float32))


def test_round_trip(saved):
    folder, params = saved
    assert sorted(os.listdir(folder)) == ["README.md", "model_config.json", "params", "tokenizer"]
    assert "tokenizer.json" in os.listdir(os.path.join(folder, "tokenizer"))
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]  # no temp folders left
    cfg, loaded, tok = model_io.load_model(folder)
    assert cfg == TINY
    assert tok == os.path.join(folder, "tokenizer")
    _assert_trees_equal(params, loaded)


def test_partial_read_and_specs(saved):
    folder, params = saved
    got = model_io.read_leaves(folder, ["head/scale", "encoder/layer_0/attention/kernel"])
    assert sorted(got) == ["encoder/layer_0/attention/kernel", "head/scale"]
    assert got["head/scale"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["encoder/layer_0/attention/kernel"], params["encoder"]["layer_0"]["attention"]["kernel"])
    specs = model_io.read_param_specs(folder)
    assert specs["embeddings/word_embeddings/embedding"] == ((50, 8), np.dtype(np.float32))
    assert specs["head/scale"][1] == np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(ModelFolderError, match="no parameter"):
        model_io.read_leaves(folder, ["head/missing"])


def test_train_workdir_and_overwrite(saved, tmp_path):
    folder, params = saved
    workdir = tmp_path / "run"
    model_io.save_model_folder(workdir / "model", TINY, params, os.path.join(folder, "tokenizer"))
    assert model_io.resolve_model_folder(workdir) == str(workdir / "model")
    with pytest.raises(FileExistsError, match="already exists"):
        model_io.save_model_folder(workdir / "model", TINY, _params(1), None)
    _assert_trees_equal(model_io.load_model(workdir)[1], params)  # untouched by the refused save
    model_io.save_model_folder(workdir / "model", TINY, _params(1), None, overwrite=True)
    cfg, loaded, tok = model_io.load_model(workdir)
    _assert_trees_equal(loaded, _params(1))
    assert tok is None
    assert os.listdir(tmp_path) == ["run"] and os.listdir(workdir) == ["model"]


def test_hf_folder(minilm_path):
    cfg, params, tok = model_io.load_model(minilm_path)
    assert cfg.arch == "bert" and cfg.hidden_size == 384 and cfg.num_hidden_layers == 6
    assert tok == minilm_path
    assert model_io.resolve_model_folder(minilm_path) is None
    with pytest.raises(ModelFolderError, match="Hugging Face folder"):
        model_io.read_leaves(minilm_path, ["x"])


def test_clear_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="no such file or directory"):
        model_io.load_model(tmp_path / "nope")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(ModelFolderError, match=r"model_config.json \+ params/.*notes.txt"):
        model_io.load_model(tmp_path / "stuff")
    (tmp_path / "wd" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelFolderError, match="without a final model"):
        model_io.load_model(tmp_path / "wd")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_config.json").write_text('{"arch": "bert", "colour": 1}')
    (tmp_path / "bad" / "params").mkdir()
    with pytest.raises(ModelFolderError, match=r"bad/model_config.json: unknown ModelConfig keys: \['colour'\]"):
        model_io.read_config(str(tmp_path / "bad"))

"""Matryoshka truncation at inference: first coordinates re-normalized; encode --truncate_dim writes
exactly that; a bad width names the flag's value and the model's width."""

import numpy as np
import pytest
from absl import flags

from boom_jax import encode
from boom_jax.models.truncation import TruncatedEncoder, truncate_embeddings
from tests.helpers_tiny_models import make_tiny_bert_folder


def test_truncate_embeddings():
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    got = truncate_embeddings(x, 3)
    np.testing.assert_allclose(got, x[:, :3] / np.linalg.norm(x[:, :3], axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(truncate_embeddings(x, 3, normalize=False), x[:, :3])
    with pytest.raises(ValueError, match="truncate_dim=9 must be between 1 and the embedding width 8"):
        truncate_embeddings(x, 9)


def test_encode_command_truncates(tmp_path):
    folder = make_tiny_bert_folder(tmp_path / "model")
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat sat\nthe dog barked at the mailman\nhello\n", encoding="utf-8")
    full = encode.encode_file(folder, str(texts), str(tmp_path / "full.npy"))
    fv = flags.FlagValues()
    encode.define_flags(fv)
    fv(["encode", f"--model={folder}", f"--input={texts}", f"--output={tmp_path / 'cut.npy'}", "--truncate_dim=8"])
    encode.main(["encode"], fv)
    want = np.load(full)[:, :8]
    if encode.load_encoder(folder).cfg.normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "cut.npy"), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="truncate_dim=64 must be between 1 and the model's embedding width 32"):
        TruncatedEncoder(encode.load_encoder(folder), 64)


def test_model_card_lists_matryoshka_widths_and_loss():
    from boom_jax.hf.model_card import render_model_card
    from boom_jax.models import ModelConfig
    from configs.common import base_config

    loss = base_config().loss.to_dict()
    loss.update(matryoshka_dims="384,128,32", kd_weight=1.0, fake_negative_mask=True)
    cfg = ModelConfig(arch="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    card = render_model_card(cfg, {"kind": "trained", "training": {"loss": loss, "batch_size": 8}})
    assert "truncate_dim=32" in card and "widths 384, 128, 32" in card
    assert "| Loss | InfoNCE x 1 + distillation (kl_div) x 1 |" in card
    assert "| InfoNCE options | fake-negative mask |" in card
    plain = render_model_card(cfg, {"kind": "trained", "training": {"loss": base_config().loss.to_dict(),
                                                                    "batch_size": 8}})
    assert "truncate_dim" not in plain and "| Loss |" not in plain

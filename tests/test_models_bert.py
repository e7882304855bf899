"""The Flax BERT encoder against PyTorch: real MiniLM weights vs sentence-transformers, a tiny random
BertModel vs transformers, bf16 compute, remat and dropout."""

import numpy as np
import pytest

LONG_TEXT = " ".join(f"token{i} and some words" for i in range(200))  # far beyond 256 tokens

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "",
    " ",
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée, naïve façade, jalapeño piñata.",
    "Ünïcödé ẗëxẗ wïth dïäcrïtïcs",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "I love pizza 🍕🍕 and rockets 🚀!",
    "👍",
    "def add(a, b):\n    return a + b",
    "SELECT * FROM users WHERE id = 42;",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "numbers 3.14159 2.71828 1e-9 -17",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "tabs\tand\nnewlines\r\nmixed",
    "a " * 100,
    LONG_TEXT,
    "Short.",
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    from boom_jax.hf.encoders import load_encoder

    encoder = load_encoder(minilm_path)
    st = SentenceTransformer(minilm_path, device="cpu")
    return encoder, st


def _cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_config_read_from_sentence_transformers_files(minilm):
    cfg = minilm[0].cfg
    assert (cfg.arch, cfg.pooling, cfg.normalize, cfg.max_seq_length) == ("bert", "mean", True, 256)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 12)


def test_minilm_matches_sentence_transformers(minilm):
    encoder, st = minilm
    assert len(encoder.text_tokenizer.token_ids([LONG_TEXT])[0]) == 256  # truncated at max_seq_length
    ours = encoder.encode(TEXTS, batch_size=4)
    ref = st.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - ref).max() <= 1e-5
    assert _cosines(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Batch composition and order do not change a text's embedding.
    a, b = encoder.encode(TEXTS[:2], batch_size=4)
    np.testing.assert_allclose(np.stack([a, b]), ours[:2], atol=2e-6)
    assert TEXTS[:2] == ["A man is eating food.", "A man is eating a piece of bread."]
    assert abs(float(a @ b) - 0.7553) <= 5e-4


def test_prompt_is_prepended_like_sentence_transformers(minilm):
    encoder, st = minilm
    texts = ["what is jax", "how do embeddings work?"]
    ours = encoder.encode(texts, prompt="query: ")
    ref = st.encode(texts, prompt="query: ", convert_to_numpy=True)
    assert np.abs(ours - ref).max() <= 1e-5
    assert np.abs(ours - encoder.encode(texts)).max() > 1e-3
    with pytest.raises(KeyError, match="prompt_name='nope'"):
        encoder.encode(texts, prompt_name="nope")
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode("one string")


def test_bfloat16_compute_stays_close_to_float32(minilm, minilm_path):
    from boom_jax.models.encoder import Encoder

    encoder = minilm[0]
    texts = TEXTS[:2]
    bf16 = Encoder(encoder.cfg.replace(dtype="bfloat16"), encoder.params, encoder.tokenizer)
    low, full = bf16.encode(texts), encoder.encode(texts)
    assert low.dtype == np.float32
    assert np.abs(low - full).max() > 0  # really computed in bf16
    assert _cosines(low, full).min() > 0.99
    jax_leaf = bf16.params["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert jax_leaf.dtype == np.float32  # params stay float32


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, hidden_act="gelu")
    model = BertModel(config).eval()
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return model, str(path)


def test_tiny_random_bert_matches_transformers(tiny_bert):
    import jax
    import torch

    from boom_jax.hf.loader import load_hf_model
    from boom_jax.models import build_model

    model, path = tiny_bert
    cfg, params = load_hf_model(path, pooling="mean")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 99, size=(3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    m = mask[..., None].astype(np.float32)
    ref_mean = (hidden * m).sum(1) / m.sum(1)
    module = build_model(cfg)
    cls_module = build_model(cfg.replace(pooling="cls"))
    remat = build_model(cfg.replace(remat=True, dropout=0.1, attention_dropout=0.1))
    key = jax.random.key(1)

    @jax.jit
    def run(p):  # one compilation for every variant
        def dropout_loss(q):
            out = remat.apply({"params": q}, ids, mask, deterministic=False, rngs={"dropout": key})
            return (out ** 2).sum(), out

        grads, dropped = jax.grad(dropout_loss, has_aux=True)(p)
        return dict(
            mean=module.apply({"params": p}, ids, mask),
            cls=cls_module.apply({"params": p}, ids, mask),
            tokens=module.apply({"params": p}, ids, mask, return_token_states=True),
            remat=remat.apply({"params": p}, ids, mask),
            dropped=dropped,
            grad=grads["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"],
        )

    out = jax.tree_util.tree_map(np.asarray, run(params))
    assert np.abs(out["mean"] - ref_mean).max() <= 1e-5
    assert np.abs(out["cls"] - hidden[:, 0]).max() <= 1e-5
    assert np.abs((out["tokens"] - hidden) * m).max() <= 1e-5
    # remat changes memory use, not results; dropout is active only when not deterministic.
    np.testing.assert_allclose(out["remat"], out["mean"], atol=1e-6)
    assert np.abs(out["dropped"] - out["mean"]).max() > 1e-3
    assert float(np.abs(out["grad"]).sum()) > 0


def test_checkpoint_prefixes_are_tolerated(tiny_bert, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from boom_jax.hf.loader import load_hf_model

    _, path = tiny_bert
    prefixed = tmp_path / "prefixed"
    shutil.copytree(path, prefixed)
    tensors = load_file(prefixed / "model.safetensors")
    save_file({f"bert.{k}": v for k, v in tensors.items()}, prefixed / "model.safetensors", metadata={"format": "pt"})
    _, plain = load_hf_model(path)
    _, stripped = load_hf_model(prefixed)
    np.testing.assert_array_equal(plain["encoder"]["layer_1"]["output"]["dense"]["kernel"],
                                  stripped["encoder"]["layer_1"]["output"]["dense"]["kernel"])


def test_init_params_matches_weight_map_tree():
    import jax

    from boom_jax.hf.bert_weights import flax_to_hf, hf_to_flax
    from boom_jax.models import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=32)
    params = init_params(cfg, jax.random.key(0))
    assert type(params) is dict and type(params["encoder"]) is dict
    back = hf_to_flax(flax_to_hf(params, cfg), cfg)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)

"""Packed sequences: several texts per row with segment ids give the same embeddings (and gradients)
as one text per padded row, and no segment sees another (tiny BERT, tiny Qwen3, real MiniLM). Also
the paths they run through: the fused attention against the explicit reference, the layer scan
against the unrolled loop (dropout and remat included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boom_jax.models import ModelConfig, build_model, init_params
from boom_jax.models.attention import attention, reference_attention
from boom_jax.models.pooling import pool
from boom_jax.models.segments import segment_attention_mask, segment_positions

TINY_BERT = ModelConfig(
    arch="bert", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=64, normalize=True,
)
TINY_QWEN3 = ModelConfig(
    arch="qwen3", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, intermediate_size=64, rope_theta=10000.0,
    pooling="lasttoken", normalize=True, padding_side="left", has_pooler=False,
)
LENGTHS = (5, 3, 9, 2, 4, 7)
ROW, PADDED, SLOTS = 16, 9, 3  # packed rows of 16 tokens hold at most 3 texts; unpacked rows 9 tokens


def random_texts(seed=0, lengths=LENGTHS, vocab=97):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, vocab, n)) for n in lengths]


def pack(texts, row=ROW, slots=SLOTS):
    """Greedy first-fit packing: (ids, segment ids [R, row]) and each text's (row, slot)."""
    rows, where = [], []
    for text in texts:
        for r, content in enumerate(rows):
            if sum(map(len, content)) + len(text) <= row and len(content) < slots:
                break
        else:
            rows.append([])
            r = len(rows) - 1
        where.append((r, len(rows[r])))
        rows[r].append(text)
    ids = np.zeros((len(rows), row), np.int32)
    seg = np.zeros((len(rows), row), np.int32)
    for r, content in enumerate(rows):
        at = 0
        for j, text in enumerate(content):
            ids[r, at:at + len(text)], seg[r, at:at + len(text)] = text, j + 1
            at += len(text)
    return ids, seg, where


def pad(texts, length=PADDED, side="right"):
    ids = np.zeros((len(texts), length), np.int32)
    mask = np.zeros_like(ids)
    for i, text in enumerate(texts):
        span = slice(0, len(text)) if side == "right" else slice(length - len(text), length)
        ids[i, span], mask[i, span] = text, 1
    return ids, mask


def packed_and_unpacked(cfg, params, texts):
    """(packed embeddings gathered per text, unpacked embeddings), one compiled program."""
    module = build_model(cfg)
    ids, seg, where = pack(texts)
    pids, mask = pad(texts, side=cfg.padding_side)
    index = tuple(np.asarray(where).T)

    @jax.jit
    def run(p):
        packed = module.apply({"params": p}, ids, seg, num_segments=SLOTS)
        return packed[index], packed, module.apply({"params": p}, pids, mask)

    return jax.tree_util.tree_map(np.asarray, run(params))


@pytest.fixture(scope="module")
def bert_params():
    return init_params(TINY_BERT, jax.random.key(0))


@pytest.fixture(scope="module")
def qwen3_params():
    return init_params(TINY_QWEN3, jax.random.key(1))


def test_segment_positions_and_mask():
    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]], np.int32)
    np.testing.assert_array_equal(
        np.asarray(segment_positions(seg)), [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 0, 1, 2, 3, 4, 5]]
    )
    allowed = np.asarray(segment_attention_mask(seg, causal=True))
    want = (seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((8, 8), bool))
    np.testing.assert_array_equal(allowed, want)
    assert allowed[0, 4].tolist() == [False, False, False, True, True, False, False, False]


def test_segment_pool_matches_numpy():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 8, 4)).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    spans = {(0, 0): (0, 3), (0, 1): (3, 5), (0, 2): (5, 6), (1, 0): (0, 8)}
    for mode, pick in [("mean", lambda h: h.mean(0)), ("cls", lambda h: h[0]), ("lasttoken", lambda h: h[-1])]:
        out = np.asarray(pool(hidden, seg, mode, num_segments=4))
        want = np.zeros((2, 4, 4), np.float32)
        for (r, s), (a, b) in spans.items():
            want[r, s] = pick(hidden[r, a:b])
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
        unit = np.asarray(pool(hidden, seg, mode, normalize=True, num_segments=4))
        norms = np.linalg.norm(want, axis=-1, keepdims=True)
        np.testing.assert_allclose(unit, np.where(norms > 0, want / np.maximum(norms, 1e-12), 0), atol=1e-6)
    with pytest.raises(ValueError, match="num_segments must be a positive int"):
        pool(hidden, seg, "mean", num_segments=0)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_packed_equals_unpacked(bert_params, pooling):
    cfg = TINY_BERT.replace(pooling=pooling)
    gathered, packed, unpacked = packed_and_unpacked(cfg, bert_params, random_texts())
    assert packed.shape == (3, SLOTS, cfg.hidden_size) and packed.dtype == np.float32
    np.testing.assert_allclose(gathered, unpacked, atol=1e-5, rtol=0)
    # slots without a text are zeros (finite after normalization)
    used = np.zeros(packed.shape[:2], bool)
    used[tuple(np.asarray(pack(random_texts())[2]).T)] = True
    assert np.all(np.isfinite(packed)) and np.all(packed[~used] == 0) and (~used).any()


def test_qwen3_packed_equals_left_padded_unpacked(qwen3_params):
    gathered, _, unpacked = packed_and_unpacked(TINY_QWEN3, qwen3_params, random_texts(1))
    np.testing.assert_allclose(gathered, unpacked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_name", ["bert", "qwen3"])
def test_perturbing_one_segment_leaves_the_others_unchanged(cfg_name, bert_params, qwen3_params):
    cfg, params = (TINY_BERT, bert_params) if cfg_name == "bert" else (TINY_QWEN3, qwen3_params)
    module = build_model(cfg)
    ids, seg, _ = pack(random_texts(2))
    changed = ids.copy()
    target = (0, 2)  # row 0, segment 2 (the middle text of the row)
    rng = np.random.default_rng(3)
    changed[seg == 0] = 5  # padding tokens too
    changed[0][seg[0] == 2] = rng.integers(1, cfg.vocab_size, (seg[0] == 2).sum())
    fn = jax.jit(lambda i: module.apply({"params": params}, i, seg, num_segments=SLOTS))
    before, after = np.asarray(fn(ids)), np.asarray(fn(changed))
    others = np.ones(before.shape[:2], bool)
    others[target[0], target[1] - 1] = False
    np.testing.assert_allclose(after[others], before[others], atol=1e-6, rtol=0)
    assert np.abs(after[0, 1] - before[0, 1]).max() > 1e-3


@pytest.mark.parametrize("cfg_name", ["bert", "qwen3"])
def test_gradients_of_packed_loss_equal_unpacked(cfg_name, bert_params, qwen3_params):
    cfg, params = (TINY_BERT, bert_params) if cfg_name == "bert" else (TINY_QWEN3, qwen3_params)
    module = build_model(cfg)
    texts = random_texts(4)
    ids, seg, where = pack(texts)
    pids, mask = pad(texts, side=cfg.padding_side)
    index = tuple(np.asarray(where).T)
    weights = np.random.default_rng(5).normal(size=(len(texts), cfg.hidden_size)).astype(np.float32)

    def packed_loss(p):
        return jnp.sum(module.apply({"params": p}, ids, seg, num_segments=SLOTS)[index] * weights)

    def unpacked_loss(p):
        return jnp.sum(module.apply({"params": p}, pids, mask) * weights)

    grads = jax.jit(lambda p: (jax.grad(packed_loss)(p), jax.grad(unpacked_loss)(p)))(params)
    ours, ref = jax.tree_util.tree_map(np.asarray, grads)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    for path, g in jax.tree_util.tree_leaves_with_path(ours):
        # 1e-5 absolute, relative to the tensor's largest gradient where that exceeds 1 (sums of many terms)
        scale = max(1.0, float(np.abs(flat_ref[path]).max()))
        np.testing.assert_allclose(g, flat_ref[path], atol=1e-5 * scale, rtol=0, err_msg=jax.tree_util.keystr(path))
    assert max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(ours)) > 1e-3


def test_minilm_packed_equals_unpacked(minilm_path):
    from boom_jax.hf.loader import load_hf_model
    from boom_jax.tokenization import TextTokenizer, load_tokenizer

    cfg, params = load_hf_model(minilm_path)
    texts = [
        "A man is eating food.", "A man is eating a piece of bread.", "Hello!",
        "What is the capital of France?", "Paris is the capital and most populous city of France.",
        "The quick brown fox jumps over the lazy dog.", "東京は日本の首都です。", "👍",
    ]
    tokenizer = TextTokenizer(load_tokenizer(minilm_path), 64, cfg.padding_side, cfg.append_eos)
    token_ids = tokenizer.token_ids(texts)
    ids, seg, where = pack(token_ids, row=40, slots=4)
    pids, mask = tokenizer.pad(token_ids)
    module = build_model(cfg)
    index = tuple(np.asarray(where).T)

    @jax.jit
    def run(p):
        return module.apply({"params": p}, ids, seg, num_segments=4)[index], module.apply({"params": p}, pids, mask)

    packed, unpacked = map(np.asarray, run(params))
    assert ids.shape[0] < len(texts)  # several texts share a row
    np.testing.assert_allclose(packed, unpacked, atol=1e-5, rtol=0)


def _packed_qkv(dtype=jnp.float32, heads=4, kv_heads=2):
    rng = np.random.default_rng(7)
    _, seg, _ = pack(random_texts(6))
    b, t = seg.shape
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, 16)), dtype) for n in (heads, kv_heads, kv_heads))
    return q, k, v, segment_attention_mask(seg)


def test_dot_product_attention_equals_reference():
    q, k, v, allowed = _packed_qkv()
    weights = jnp.asarray(np.random.default_rng(8).normal(size=q.shape), jnp.float32)

    def paths(q, k, v, causal):
        return (reference_attention(q, k, v, allowed, causal, 0.25),
                attention(q, k, v, allowed, causal=causal, impl="dot_product"))

    @jax.jit
    def run(q, k, v):
        out = {}
        for causal in (False, True):
            losses = [lambda *a, i=i: jnp.sum(paths(*a, causal)[i] * weights) for i in range(2)]
            out[causal] = dict(
                outputs=paths(q, k, v, causal),
                grads=[jax.grad(f, argnums=(0, 1, 2))(q, k, v) for f in losses],
                bf16=paths(*(x.astype(jnp.bfloat16) for x in (q, k, v)), causal),
            )
        return out

    for causal, out in jax.tree_util.tree_map(np.asarray, run(q, k, v)).items():
        ref, fused = out["outputs"]
        np.testing.assert_allclose(fused, ref, atol=1e-5, rtol=0, err_msg=f"causal={causal}")
        for g, r in zip(*out["grads"]):
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=0, err_msg=f"causal={causal}")
        # bf16 inputs: both paths stay near the float32 result
        for low in out["bf16"]:
            np.testing.assert_allclose(low.astype(np.float32), ref, atol=3e-2, rtol=0)
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        attention(q, k, v, allowed, causal=False, impl="flash")


@pytest.mark.parametrize("cfg_name", ["bert", "qwen3"])
def test_models_agree_across_attention_paths(cfg_name, bert_params, qwen3_params):
    cfg, params = (TINY_BERT, bert_params) if cfg_name == "bert" else (TINY_QWEN3, qwen3_params)
    ids, seg, _ = pack(random_texts(9))
    modules = [build_model(cfg.replace(attention_impl=impl)) for impl in ("reference", "dot_product")]

    @jax.jit
    def run(p):
        return [(m.apply({"params": p}, ids, seg, num_segments=SLOTS),
                 m.apply({"params": p}, ids, seg, return_token_states=True)) for m in modules]

    (ref_emb, ref_states), (emb, states) = jax.tree_util.tree_map(np.asarray, run(params))
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)
    np.testing.assert_allclose(states[seg > 0], ref_states[seg > 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_name", ["bert", "qwen3"])
def test_scan_loop_and_remat_give_the_same_dropout_outputs_and_gradients(cfg_name, bert_params, qwen3_params):
    cfg, params = (TINY_BERT, bert_params) if cfg_name == "bert" else (TINY_QWEN3, qwen3_params)
    # BERT: attention dropout too (the reference path); Qwen3: hidden dropout on the fused path.
    cfg = cfg.replace(dropout=0.2, attention_dropout=0.2 if cfg_name == "bert" else 0.0)
    ids, seg, _ = pack(random_texts(10))
    weights = jnp.asarray(np.random.default_rng(11).normal(size=(ids.shape[0], SLOTS, cfg.hidden_size)), jnp.float32)
    scan_remat, loop_plain = "scan+remat", "loop"
    variants = {scan_remat: build_model(cfg.replace(scan_layers=True, remat=True)),
                loop_plain: build_model(cfg.replace(scan_layers=False, remat=False))}

    def loss(p, module, key):
        out = module.apply({"params": p}, ids, seg, deterministic=False, rngs={"dropout": key},
                           num_segments=SLOTS)
        return jnp.sum(out * weights), out

    keys = jax.random.split(jax.random.key(3), 2)

    @jax.jit
    def run(p):
        out = {name: jax.grad(loss, has_aux=True)(p, m, keys[0]) for name, m in variants.items()}
        # stacked bag members: vmap over dropout keys equals each key alone
        out["vmapped"] = jax.vmap(lambda k: loss(p, variants[scan_remat], k)[1])(keys)
        out["second"] = loss(p, variants[scan_remat], keys[1])[1]
        out["eval"] = variants[scan_remat].apply({"params": p}, ids, seg, num_segments=SLOTS)
        return out

    out = jax.tree_util.tree_map(np.asarray, run(params))
    ref_grads, ref_out = out[loop_plain]
    for name in variants:
        grads, emb = out[name]
        np.testing.assert_allclose(emb, ref_out, atol=1e-6, rtol=0, err_msg=str(name))
        for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=0, err_msg=str(name))
    np.testing.assert_allclose(out["vmapped"][0], ref_out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["vmapped"][1], out["second"], atol=1e-6, rtol=0)
    assert np.abs(ref_out - out["eval"]).max() > 1e-3 and np.abs(out["second"] - ref_out).max() > 1e-3
    jaxpr = str(jax.make_jaxpr(lambda p: loss(p, variants[scan_remat], keys[0]))(params))
    assert "scan" in jaxpr and "remat" in jaxpr


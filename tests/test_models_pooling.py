"""Pooling against NumPy references; last-token pooling is the same for left and right padding."""

import numpy as np


def test_pooling_modes_match_numpy():
    from boom_jax.models.pooling import pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
    m = mask[..., None].astype(np.float32)
    mean = (hidden * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(np.asarray(pool(hidden, mask, "mean")), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pool(hidden, mask, "cls")), hidden[:, 0])
    np.testing.assert_allclose(np.asarray(pool(hidden, mask, "lasttoken")), hidden[[0, 1, 2], [2, 4, 0]])
    unit = np.asarray(pool(hidden, mask, "mean", normalize=True))
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_lasttoken_left_and_right_padding_agree():
    from boom_jax.models.pooling import pool

    rng = np.random.default_rng(1)
    lengths = [2, 5, 3]
    right_h, left_h = np.zeros((3, 5, 4), np.float32), np.zeros((3, 5, 4), np.float32)
    right_m, left_m = np.zeros((3, 5), np.int32), np.zeros((3, 5), np.int32)
    for i, n in enumerate(lengths):
        states = rng.normal(size=(n, 4)).astype(np.float32)
        right_h[i, :n], right_m[i, :n] = states, 1
        left_h[i, 5 - n:], left_m[i, 5 - n:] = states, 1
    right = np.asarray(pool(right_h, right_m, "lasttoken"))
    left = np.asarray(pool(left_h, left_m, "lasttoken"))
    np.testing.assert_array_equal(right, left)
    assert np.abs(right).sum() > 0


def test_unknown_pooling_mode_is_named():
    import pytest

    from boom_jax.models import ModelConfig
    from boom_jax.models.config import ConfigError
    from boom_jax.models.pooling import pool

    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        pool(np.zeros((1, 2, 3), np.float32), np.ones((1, 2), np.int32), "max")
    with pytest.raises(ConfigError, match="pooling='max'"):
        ModelConfig(pooling="max")
    with pytest.raises(ConfigError, match=r"unknown ModelConfig keys: \['nope'\]"):
        ModelConfig().replace(nope=1)
    cfg = ModelConfig(prompts={"query": "q: "}, lora_targets=["q", "v"])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and hash(ModelConfig.from_dict(cfg.to_dict())) == hash(cfg)

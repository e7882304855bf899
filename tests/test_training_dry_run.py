"""Compile-only dry run on the fake 8-device mesh: per-device param / optimizer bytes equal a hand
count, FLOPs are in the range of 6 x params x tokens, and too many devices is a clear error."""

import math

import pytest

from boom_jax.training.dry_run import DryRunError, abstract_model, dry_run, format_report
from configs import tiny


@pytest.fixture(scope="module")
def config():
    c = tiny.get_config()
    with c.unlocked():
        c.mesh.data = 4
        c.mesh.fsdp = 2
    return c


@pytest.fixture(scope="module")
def report(config):
    return dry_run(config, num_devices=8, device_memory_bytes=2**30)


def test_param_and_optimizer_bytes_match_a_hand_count(config, report):
    _, params = abstract_model(config)
    import jax

    leaves = jax.tree.leaves(params)
    count = sum(math.prod(x.shape) for x in leaves)
    # tiny BERT: embeddings 30522x32 + 512x32 + 2x32, 2 layers of hidden 32 / intermediate 64, pooler.
    assert count == report["param_count"] == 1_011_360
    # fsdp=2: every matrix is split in two (one of its dimensions over "fsdp"); vectors are replicated.
    hand = 4 * sum(math.prod(x.shape) // (2 if x.ndim >= 2 else 1) for x in leaves)
    assert report["param_bytes_per_device"] == hand
    # AdamW: two float32 moments shaped (and sharded) like the params, plus int32 step counters.
    assert 0 <= report["opt_state_bytes_per_device"] - 2 * hand <= 64
    # The batch: 8 queries + 16 passages of 32 int32 tokens (ids and mask), split over 8 devices;
    # in_batch_negatives is one bool per query.
    assert report["batch_bytes_per_device"] == (2 * (8 + 16) * 32 * 4 + 8) // 8
    assert report["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert report["argument_size_in_bytes"] >= report["param_bytes_per_device"] + report["opt_state_bytes_per_device"]
    assert report["temp_size_in_bytes"] > 0
    assert report["fits"] is True and report["peak_bytes_per_device"] < 2**30


def test_flops_are_those_of_a_training_step(report):
    matmul = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # per-layer matmul weights of the two layers
    tokens = 8 * 32 + 16 * 32
    assert report["flops_per_step"] == pytest.approx(8 * report["flops_per_step_per_device"])
    # Forward + backward through the matmuls is 6 x weights x tokens; attention, embeddings and the
    # loss add to it, but not by orders of magnitude.
    assert 6 * matmul * tokens <= report["flops_per_step"] <= 100 * 6 * matmul * tokens
    text = format_report(report)
    assert "optimizer state" in text and "fits" in text


def test_more_devices_than_visible_is_an_error(config):
    with pytest.raises(DryRunError, match="xla_force_host_platform_device_count=16"):
        dry_run(config, num_devices=16)

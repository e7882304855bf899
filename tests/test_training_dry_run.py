"""Compile-only dry run: per-device param / optimizer bytes equal a hand count; FLOPs count every loop
body by its trip count (the gradient cache's chunks, the scanned layers) and equal the analytic count;
the analytic memory count is within 25% of XLA:CPU's temporaries at small float32 shapes; an XLA:CPU
figure alone never says "DOES NOT FIT"; bad targets are clear errors."""

import json
import math

import jax
import ml_collections
import pytest

from boom_jax.training import memory_model
from boom_jax.training.dry_run import (
    DryRunError,
    abstract_model,
    apply_memory_limit,
    build_step,
    dry_run,
    format_report,
    parse_topology,
    target_devices,
)
from boom_jax.training.flops import traced_flops
from configs import qwen3_0p6b_bls, tiny

# A Qwen3 architecture small enough to compile in seconds (config.json only: the dry run reads no weights).
TINY_QWEN3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
              "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": True, "attention_bias": False}


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


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen3_config")
    (folder / "config.json").write_text(json.dumps(TINY_QWEN3))
    return str(folder)


def qwen3_config(folder, batch=8, group=4, length=64, remat=True, chunk=0, layers=2, dtype="float32"):
    """The Qwen3-0.6B recipe at tiny sizes (random init of the tiny folder's architecture)."""
    c = qwen3_0p6b_bls.get_config()
    with c.unlocked():
        c.model.path = folder
        c.model.random_init = True
        c.model.sizes = ml_collections.ConfigDict({"num_hidden_layers": layers})
        c.model.dtype = dtype
        c.model.remat = remat
        c.train.batch_size = batch
        c.train.grad_cache_chunk = chunk
        c.data.train_group_size = group
        c.data.query_max_len = length
        c.data.passage_max_len = length
    return c


def test_param_and_optimizer_bytes_match_a_hand_count(config, report):
    _, params = abstract_model(config)
    leaves = jax.tree.leaves(params)
    count = sum(math.prod(x.shape) for x in leaves)
    # tiny BERT: embeddings 30522x32 + 512x32 + 2x32, 2 layers of hidden 32 / intermediate 64, pooler.
    assert count == report["param_count"] == 1_011_360
    # fsdp=2: every matrix is split in two (one of its dimensions over "fsdp"); vectors are replicated.
    hand = 4 * sum(math.prod(x.shape) // (2 if x.ndim >= 2 else 1) for x in leaves)
    assert report["param_bytes_per_device"] == hand == report["analytic"]["params"]
    # AdamW: two float32 moments shaped (and sharded) like the params, plus int32 step counters.
    assert 0 <= report["opt_state_bytes_per_device"] - 2 * hand <= 64
    # The batch: 8 queries + 16 passages of 32 int32 tokens (ids and mask), split over 8 devices;
    # in_batch_negatives is one bool per query.
    assert report["batch_bytes_per_device"] == (2 * (8 + 16) * 32 * 4 + 8) // 8
    assert report["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert report["argument_size_in_bytes"] >= report["param_bytes_per_device"] + report["opt_state_bytes_per_device"]
    assert report["temp_size_in_bytes"] > 0
    assert report["estimate"] == "analytic" and report["peak_bytes_per_device"] == report["analytic"]["peak"]
    assert report["fits"] is True and report["peak_bytes_per_device"] < 2**30
    text = format_report(report)
    assert "optimizer state" in text and "fits" in text and "XLA:CPU" in text


def test_flops_equal_the_analytic_count_and_count_each_grad_cache_chunk(qwen3_folder):
    """8 gradient-cache chunks cost the plain step plus one more forward of all 8 chunks, as the
    analytic count says; counting each loop body once (XLA's cost analysis) sees one chunk and one layer."""
    devices = target_devices(1)
    plain = build_step(qwen3_config(qwen3_folder), devices)
    cached = build_step(qwen3_config(qwen3_folder, chunk=1), devices)  # 8 queries: 8 chunks of 1 (+ 4 passages)
    plain_flops = traced_flops(plain.jitted.trace(plain.state, plain.batch))
    cached_flops = traced_flops(cached.jitted.trace(cached.state, cached.batch))
    cfg = plain.cfg
    assert plain_flops.flops == pytest.approx(memory_model.step_flops(cfg, 8, 64, 32, 64), rel=1e-9)
    assert cached_flops.flops == pytest.approx(memory_model.step_flops(cfg, 8, 64, 32, 64, grad_cache=True), rel=1e-9)
    w_q, a_q, _ = memory_model.layer_matmul_flops(cfg, 1, 64)
    w_p, a_p, _ = memory_model.layer_matmul_flops(cfg, 4, 64)
    one_chunk_forward = cfg.num_hidden_layers * (w_q + a_q + w_p + a_p)
    assert cached_flops.flops - plain_flops.flops == pytest.approx(8 * one_chunk_forward, rel=1e-9)
    assert cached_flops.flops_loops_once < cached_flops.flops / 8


def test_lora_flops_skip_the_frozen_weight_gradients(qwen3_folder):
    """LoRA: the frozen kernels' weight gradients are dead code (the step zeroes them), so only their
    input gradients and the adapters' matmuls count; the analytic count agrees to 1%."""
    config = qwen3_config(qwen3_folder)
    with config.unlocked():
        config.model.lora_rank, config.model.lora_alpha, config.model.lora_dropout = 8, 8.0, 0.0
        config.model.lora_targets = "q,k,v,o,gate,up,down"
    setup = build_step(config, target_devices(1))
    flops = traced_flops(setup.jitted.trace(setup.state, setup.batch)).flops
    assert flops == pytest.approx(memory_model.step_flops(setup.cfg, 8, 64, 32, 64, trainable_weights=False), rel=0.01)
    full = memory_model.step_flops(setup.cfg.replace(lora_rank=0), 8, 64, 32, 64)
    assert flops < 0.97 * full


@pytest.fixture(scope="module")
def one_layer_report(qwen3_folder):
    return dry_run(qwen3_config(qwen3_folder, length=128, layers=1), num_devices=1, stand_in_for="cpu")


def test_flops_match_xla_cost_analysis_without_loops(one_layer_report):
    """One layer, no gradient cache: no loop runs more than once, so XLA's count (matmuls plus
    elementwise work) is the reference; ours counts the matmuls."""
    ours, xla = one_layer_report["flops_per_step"], one_layer_report["xla_flops_per_step"]
    assert ours == pytest.approx(one_layer_report["analytic_flops_per_step"], rel=1e-9)
    assert ours <= xla <= 1.25 * ours


def _analytic_temporaries(report):
    a = report["analytic"]
    return a["gradients"] + a["copies"] + a["activations"] + a["transient"]


def test_analytic_memory_within_25_percent_of_xla_cpu(qwen3_folder, one_layer_report):
    """float32 compute (XLA:CPU then keeps no extra copies), layers under the scan with remat: XLA:CPU's
    temporaries are the gradients, the scan's copies, the saved layer inputs and one layer's backward.
    One layer at 128 tokens (the backward dominates) and four at 64 (more of it is saved inputs)."""
    deep = dry_run(qwen3_config(qwen3_folder, length=64, layers=4), num_devices=1, stand_in_for="cpu")
    for report in (one_layer_report, deep):
        assert _analytic_temporaries(report) == pytest.approx(report["temp_size_in_bytes"], rel=0.25)


def test_a_cpu_figure_alone_never_says_does_not_fit(qwen3_folder):
    report = dry_run(qwen3_config(qwen3_folder, dtype="bfloat16"), num_devices=1)
    analytic, cpu = report["analytic_peak_bytes_per_device"], report["xla_peak_bytes_per_device"]
    assert analytic < cpu  # XLA:CPU keeps float32 copies of the bfloat16 tensors
    between = apply_memory_limit(report, (analytic + cpu) // 2)
    assert between["fits"] is True
    text = format_report(between)
    assert "DOES NOT FIT" not in text and "upper bound" in text
    below = apply_memory_limit(report, analytic // 2)
    assert below["fits"] is False
    line = format_report(below).splitlines()[-1]
    top = report["dominant"]
    assert "DOES NOT FIT" in line and top["label"] in line and top["lower_with"] in line
    assert top["bytes"] == max(v for k, v in report["analytic"].items() if k != "peak")


def test_bad_targets_are_errors(config):
    with pytest.raises(DryRunError, match="xla_force_host_platform_device_count=16"):
        dry_run(config, num_devices=16)
    with pytest.raises(DryRunError, match="--topology='v9:2x2'.*v5p:2x2x1"):
        parse_topology("v9:2x2")
    with pytest.raises(DryRunError, match="--topology='v5p-8'"):
        parse_topology("v5p-8")
    generation, grid = parse_topology("v5e:2x4")
    assert (generation.device_kind, grid) == ("TPU v5 lite", (2, 4))

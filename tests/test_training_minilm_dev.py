"""A short MiniLM run really improves dev retrieval (the periodic dev evaluation in the loop)."""

from __future__ import annotations

import json

from boom_jax.training.loop import train
from configs import minilm_bls

TASK = "debian_desc_retrieval"
STEPS = 10


def test_short_minilm_run_raises_dev_ndcg(tmp_path):
    c = minilm_bls.get_config("smoke")
    c.data.names = "debian_desc"
    c.data.limit = 160
    c.data.fixed_length = True  # one compiled shape
    c.data.train_group_size = 2  # 1 positive + 1 hard negative
    c.data.query_max_len = 32
    c.data.passage_max_len = 64
    c.train.batch_size = 16
    c.train.max_steps = STEPS
    c.train.learning_rate = 1e-4
    c.train.log_every = STEPS
    c.checkpoint.every_steps = STEPS
    c.checkpoint.async_save = False
    c.eval.every_steps = STEPS  # scores at step 0 (the base model) and at the end
    c.eval.tasks = TASK
    c.eval.max_queries = 60
    c.eval.max_documents = 180
    c.eval.max_seq_length = 64
    c.export.sentence_transformers = False
    c.log.tensorboard = False
    c.log.progress_bar = False
    result = train(c, str(tmp_path))

    scores = {}
    with open(tmp_path / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if f"dev/ndcg_at_10/{TASK}" in record:
                scores[record["step"]] = record[f"dev/ndcg_at_10/{TASK}"]
    assert sorted(scores) == [0, STEPS]
    assert result.dev_scores[TASK] == scores[STEPS]
    assert scores[STEPS] > scores[0] + 0.01, scores  # a real gain, not noise

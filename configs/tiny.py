"""A tiny random BERT (MiniLM's tokenizer, 2 layers, hidden 32) on a slice of the built-in corpus.

For tests and quick checks: trains in seconds on CPU. `:smoke` is the same with fewer steps.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.name = "tiny"
    c.model.path = "builtin:minilm"
    c.model.random_init = True
    c.model.sizes = ml_collections.ConfigDict(
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    c.data.limit = 64
    c.data.train_group_size = 2
    c.data.query_max_len = 32
    c.data.passage_max_len = 32
    c.data.fixed_length = True
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.1
    c.train.temperature = 0.05
    c.train.max_steps = 24
    c.train.log_every = 4
    c.checkpoint.every_steps = 6
    c.checkpoint.keep = 2
    c.eval.batch_size = 32
    c.export.sentence_transformers = False
    c.log.progress_bar = False
    if arg == "smoke":
        c.train.max_steps = 4
        c.checkpoint.every_steps = 2
    elif arg:
        raise ValueError(f"configs/tiny.py: unknown argument {arg!r}; expected 'smoke' or nothing")
    return c

"""The paper's Qwen3-4B recipe: LoRA (r=32, alpha=32, dropout 0.1 on q,k,v,o,gate,up,down) with
batch-level shuffling on the BGE collection, global batch 128; the rest as configs/qwen3_0p6b_bls.py.

Needs --config.model.path=/path/to/Qwen3-4B. `:smoke` is a short local check.
"""

from __future__ import annotations

import ml_collections

from configs import qwen3_0p6b_bls


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = qwen3_0p6b_bls.qwen3_base(arg)
    c.name = "qwen3_4b_lora_bls"
    c.model.lora_rank = 32
    c.model.lora_alpha = 32.0
    c.model.lora_dropout = 0.1
    c.model.lora_targets = "q,k,v,o,gate,up,down"
    c.train.batch_size = 128 if arg != "smoke" else 8
    c.train.learning_rate = 1e-4 if arg == "smoke" else 5e-5
    return c

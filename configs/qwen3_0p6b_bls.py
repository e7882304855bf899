"""The paper's Qwen3-0.6B recipe: full fine-tune with batch-level shuffling on the BGE collection.

Global batch 256, lr 5e-5, 10% warmup, 1 epoch, temperature 0.02, 1 positive + 7 hard negatives,
max length 512, last-token pooling (left padding, EOS appended), instructions on queries only
("Instruct: {task}\\nQuery: "), bf16 compute, gradient checkpointing (remat).

Needs the Qwen3-0.6B weights in a local folder (--config.model.path=/path/to/Qwen3-0.6B) and the BGE
training data: either downloaded by `datasets` (a machine with network; "hf:" paths) or local JSONL
files in the standard format (override data.datasets.NAME.path). `:smoke` is a short local check.
"""

from __future__ import annotations

import ml_collections

from configs import common

BGE_REPO = "hf:cfli/bge-full-data"

# name -> (file in the BGE collection, task type, in-batch negatives, query instruction)
BGE_DATASETS = {
    "msmarco_passage": ("msmarco_passage", "retrieval", True,
                        "Given a web search query, retrieve relevant passages that answer the query"),
    "nq": ("nq", "retrieval", True, "Given a question, retrieve Wikipedia passages that answer the question"),
    "hotpotqa": ("hotpotqa", "retrieval", True,
                 "Given a multi-hop question, retrieve documents that can help answer the question"),
    "fever": ("fever", "retrieval", True, "Given a claim, retrieve documents that support or refute the claim"),
    "eli5": ("eli5", "retrieval", True,
             "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum"),
    "squad": ("squad", "retrieval", True, "Retrieve Wikipedia passages that answer the question"),
    "trivia": ("trivia", "retrieval", True, "Retrieve Wikipedia passages that answer the question"),
    "fiqa": ("fiqa", "retrieval", True, "Given a financial question, retrieve user replies that best answer the question"),
    "nli": ("nli", "sts", True, "Retrieve semantically similar text"),
    "sts": ("sts", "sts", True, "Retrieve semantically similar text"),
    "classification": ("classification", "classification", False, "Classify the given text"),
    "clustering": ("clustering", "clustering", False, "Identify the topic or theme of the given text"),
}


def qwen3_base(arg: str | None) -> ml_collections.ConfigDict:
    """Everything the 0.6B and 4B recipes share."""
    c = common.base_config()
    c.model.path = ""  # a local Qwen3 folder: --config.model.path=/path/to/Qwen3-0.6B
    c.model.pooling = "lasttoken"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.query_prompt_template = common.QUERY_PROMPT_TEMPLATE
    c.data.source = "files"
    c.data.datasets = ml_collections.ConfigDict({
        name: ml_collections.ConfigDict(dict(
            path=f"{BGE_REPO}/{file}", task_type=task, in_batch_negatives=ibn, instruction=instr, limit=0))
        for name, (file, task, ibn, instr) in BGE_DATASETS.items()
    })
    c.data.train_group_size = 8
    c.data.query_max_len = 512
    c.data.passage_max_len = 512
    c.train.learning_rate = 5e-5
    c.train.warmup_ratio = 0.1
    c.train.epochs = 1
    c.train.temperature = 0.02
    c.train.grad_cache_chunk = 0
    c.mesh.data = -1
    c.checkpoint.every_steps = 500
    c.eval.every_steps = 1000
    c.eval.at_end = True
    if arg == "smoke":
        c.data.source = "builtin"
        c.data.limit = 64
        c.data.query_max_len = 64
        c.data.passage_max_len = 64
        c.train.max_steps = 4
        c.checkpoint.every_steps = 2
        c.eval.every_steps = 0
        c.eval.at_end = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; expected 'smoke' or nothing")
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = qwen3_base(arg)
    c.name = "qwen3_0p6b_bls"
    c.train.batch_size = 256 if arg != "smoke" else 8
    return c

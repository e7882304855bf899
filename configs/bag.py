"""BOOM on the built-in corpus from all-MiniLM-L6-v2: a bag of members at sampling ratios, merged.

`python -m boom_jax.train --config=configs/bag.py --workdir=DIR` trains one member per ratio (each
from the same base model, batch-level shuffling on its per-dataset subset, same hyper-parameters, so
a smaller subset runs proportionally fewer steps), merges them with Multi-SLERP (equal weights),
exports the merged model and evaluates base, members and merged model on the built-in dev tasks.

Arguments: `:smoke` (two MiniLM members on a tiny slice, two dev tasks; a few minutes on CPU), `:tiny` (two
members of a tiny random model, for tests).
Useful overrides: --config.bag.ratios="(0.8,1.0)" (the paper's cheap sweet spot),
--config.bag.member=I (train member I only, for parallel launches; merge afterwards),
--config.merge.method=ties --config.merge.base=base --config.merge.params="{'density': 0.5}" (any
method of boom_jax.merging, see configs/common.py's merge section),
--config.merge.weights=auto:cocktail (weights learned on held-out examples), --config.bag.sampling=with_replacement.
"""

from __future__ import annotations

import ml_collections

from configs import minilm_bls


def bag_section() -> ml_collections.ConfigDict:
    """The `bag` section: which members, how they are sampled, how they are merged and evaluated."""
    bag = ml_collections.ConfigDict()
    bag.ratios = (0.2, 0.4, 0.6, 0.8, 1.0)  # the paper's best setting
    bag.member = -1  # -1 = every member, then merge; I = train member I only
    # True: all members in ONE program, params stacked on a 'member' mesh axis (needs a device count
    # divisible by the number of members; no mid-run checkpoints). False: one member after another.
    bag.stacked = False
    bag.seed = 0  # sampling seed (each member draws with its own seed derived from it)
    bag.sampling = "without_replacement"  # | "with_replacement" (bootstrap) | "pooled"
    bag.evaluate = True
    bag.eval_tasks = "builtin"  # builtin | builtin_in | builtin_out | comma-separated task names
    return bag


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = minilm_bls.get_config(None)
    c.name = "bag"
    c.bag = bag_section()
    # Sized so the whole default bag (5 members, merge, dev evaluation of 7 models) fits in 30 minutes
    # on 2 CPU cores; on a GPU raise data.limit (0 = everything), batch size and lengths.
    c.data.limit = 128  # examples per built-in dataset
    c.data.train_group_size = 3  # 1 positive + 2 hard negatives
    c.train.batch_size = 16
    c.train.learning_rate = 5e-5
    c.data.query_max_len = 32
    c.data.passage_max_len = 64
    c.eval.every_steps = 0
    c.eval.at_end = False
    # dev evaluation of every model: seeded samples of the 16 built-in tasks, inputs cut to 64 tokens
    c.eval.max_queries = 50
    c.eval.max_documents = 200
    c.eval.max_texts = 120
    c.eval.max_seq_length = 64
    c.export.sentence_transformers = False  # members stay model folders; the merged model is exported
    if arg == "smoke":
        c.bag.ratios = (0.5, 1.0)
        c.data.limit = 16
        c.train.batch_size = 8
        c.data.fixed_length = True  # one compiled shape
        c.data.passage_max_len = 48
        c.checkpoint.every_steps = 4
        c.bag.eval_tasks = "wordnet_gloss_retrieval,tech_faq_retrieval"
        c.eval.max_queries = 40
        c.eval.max_documents = 120
        c.eval.max_seq_length = 64
        c.log.progress_bar = False
    elif arg == "tiny":
        c.model.random_init = True
        c.model.sizes = ml_collections.ConfigDict(
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
        c.bag.ratios = (0.5, 1.0)
        c.bag.evaluate = False
        c.data.limit = 16
        c.data.train_group_size = 2
        c.train.batch_size = 8
        c.train.learning_rate = 1e-3
        c.data.query_max_len = 32
        c.data.passage_max_len = 32
        c.checkpoint.every_steps = 1
        c.checkpoint.async_save = False
        c.log.progress_bar = False
        c.log.tensorboard = False
    elif arg:
        raise ValueError(f"configs/bag.py: unknown argument {arg!r}; expected 'smoke', 'tiny' or nothing")
    return c

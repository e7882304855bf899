"""Cluster-level merging on the built-in corpus from all-MiniLM-L6-v2 (the paper's third granularity).

`python -m boom_jax.train --config=configs/cluster_merge.py --workdir=DIR` holds out a dev slice of
every dataset, trains a short probe per dataset and per pair, measures how each pair interacts
(joint minus separate dev loss), clusters the datasets hierarchically, trains one model per cluster
(batch-level shuffling, the sizes of configs/bag.py), merges them with Multi-SLERP and exports the
result (see boom_jax.boom.clusters). With the 6 built-in datasets that is 6 + 15 probes.

Arguments: `:smoke` (MiniLM, 3 datasets on a tiny slice, a few steps), `:tiny` (a tiny random
model, 3 datasets, 2-step probes, no evaluation; for tests).
Useful overrides: --config.cluster.num_clusters=2, --config.cluster.num_clusters=0
--config.cluster.threshold=0.01 (cut the tree at an interaction instead), --config.cluster.linkage=complete.
"""

from __future__ import annotations

import ml_collections

from configs import bag


def cluster_section() -> ml_collections.ConfigDict:
    """The `cluster` section: probes, held-out dev slices, clustering and merging."""
    c = ml_collections.ConfigDict()
    c.probe_steps = 16  # steps of each single-dataset probe
    c.pair_steps = 0  # steps of each pair probe; 0 = 2 x probe_steps (each dataset seen as often as alone)
    c.dev_examples = 32  # held-out examples per dataset (the last ones of a seeded shuffle)
    c.dev_batch_size = 0  # queries per dev-loss batch; 0 = train.batch_size
    c.seed = 0  # seed of the dev split
    c.num_clusters = 3  # at most this many clusters; 0 = cut the tree at `threshold` instead
    c.threshold = 0.0  # interaction at which the tree is cut (used when num_clusters = 0)
    c.linkage = "average"  # | "single" | "complete" | "weighted"
    c.evaluate = True  # dev scores of base, cluster models and merged model (config.eval caps)
    c.eval_tasks = "builtin"
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = bag.get_config("tiny" if arg == "tiny" else None)
    del c["bag"]
    c.name = "cluster_merge"
    c.cluster = cluster_section()
    if arg == "smoke":
        c.data.names = "debian_desc,debian_section,wordnet_gloss"
        c.data.limit = 48
        c.train.batch_size = 8
        c.data.fixed_length = True
        c.data.passage_max_len = 48
        c.checkpoint.every_steps = 4
        c.cluster.probe_steps = 2
        c.cluster.dev_examples = 16
        c.cluster.num_clusters = 2
        c.cluster.eval_tasks = "debian_desc_retrieval,wordnet_gloss_retrieval"
        c.eval.max_queries = 40
        c.eval.max_documents = 120
        c.log.progress_bar = False
    elif arg == "tiny":
        c.data.names = "debian_desc,debian_section,wordnet_gloss"
        c.data.limit = 24
        c.model.sizes.num_hidden_layers = 1  # 8 runs compile the same step: keep it small
        c.data.fixed_length = True
        c.train.max_steps = 2
        c.cluster.probe_steps = 1
        c.cluster.dev_examples = 8
        c.cluster.num_clusters = 2
        c.cluster.evaluate = False
    elif arg:
        raise ValueError(f"configs/cluster_merge.py: unknown argument {arg!r}; expected 'smoke', 'tiny' or nothing")
    return c

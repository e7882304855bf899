"""The BOOM paper's strategy comparison at small scale, on the built-in corpus from all-MiniLM-L6-v2.

`python -m boom_jax.experiments --config=configs/experiment.py --workdir=DIR` (what
launch/reproduce.sh runs) trains, for each of 3 seeds, BLS, task-level sequential, cluster-level
merging, one BOOM bag (members at 20..100%) merged for the ratio sets {20,40,60,80,100}
and {80,100}, and an incremental update; evaluates them all on the built-in dev tasks and writes
DIR/RESULTS.md with intervals over seeds, paired bootstrap comparisons against BLS and charts. Sized
to finish in about 90 minutes on 2 CPU cores; on a GPU raise data.limit (0 = everything), the batch
size and lengths, and the eval caps.

Arguments: `:full` (every strategy, including dataset-level sequential and merging, two-stage, the
operator study and learned merge weights, once, at configs/bag.py's sizes, so a bag trained with
`python -m boom_jax.train --config=configs/bag.py --workdir=X` is reused with
--config.experiment.bag_workdir=X), `:smoke` (MiniLM on a tiny slice, two dev tasks), `:tiny` (a tiny
random model on three datasets, no evaluation; for tests).
"""

from __future__ import annotations

import ml_collections

from configs import bag, cluster_merge, incremental


def experiment_section() -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.strategies = ("bls,dataset_sequential,task_sequential,two_stage,dataset_merging,task_merging,"
                    "cluster_merging,task_operators,boom,boom_learned,incremental")
    e.seeds = 1  # training runs per strategy (seeds config.seed, config.seed + 1, ...; bags: sampling seeds too)
    e.bootstrap_resamples = 2000  # paired bootstrap over seeds and dev items (RESULTS.md's intervals)
    # task_operators: task-level merging with each of these (mergekit defaults; task-vector operators
    # around the base model); SLERP only where there are exactly 2 task types
    e.operators = "slerp,multislerp,karcher,task_arithmetic,ties,sce,model_stock"
    e.boom_ratio_sets = "20,40,60,80,100;40,60,80,100;80,100"  # percent; sets separated by ';'
    e.bag_workdir = ""  # "" = train the bag in DIR/boom; else reuse (and complete) this bag workdir
    e.bls_from_bag = True  # the bag's 100% member is BLS on all data: report it as the BLS row
    e.dataset_order = ""  # dataset-level sequential order; "" = as loaded
    e.task_order = ""  # task-level sequential order of task types; "" = retrieval first
    e.two_stage_first = "retrieval"  # stage 1: dataset names and/or task types; stage 2: the rest
    # dataset-level, task-level and BOOM merges use config.merge (default Multi-SLERP, equal weights);
    # boom_learned merges the largest ratio set with weights learned on held-out examples (config.merge)
    e.include_base = True  # report the pretrained model too
    e.evaluate = True
    e.eval_tasks = "builtin"  # builtin | builtin_in | builtin_out | comma-separated task names
    return e


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "full", "smoke", "tiny"):
        raise ValueError(f"configs/experiment.py: unknown argument {arg!r}; expected 'full', 'smoke', 'tiny' or nothing")
    c = bag.get_config(arg if arg in ("smoke", "tiny") else None)
    c.name = "experiment"
    c.bag.ratios = (0.2, 0.4, 0.6, 0.8, 1.0)
    c.bag.evaluate = False
    c.incremental = incremental.incremental_section()
    c.incremental.compare_full_retrain = False  # the full retrain on old + new data is the BLS row
    c.incremental.evaluate = False
    c.cluster = cluster_merge.cluster_section()  # the cluster_merging row (boom_jax.boom.clusters)
    c.cluster.evaluate = False
    c.experiment = experiment_section()
    if arg in (None, ""):
        # The default comparison (launch/reproduce.sh): 3 seeds of the paper's main rows, sized to finish
        # in about 90 minutes on 2 CPU cores; `:full` runs every strategy once.
        c.experiment.seeds = 3
        c.experiment.strategies = "bls,task_sequential,cluster_merging,boom,incremental"
        c.experiment.boom_ratio_sets = "20,40,60,80,100;80,100"
        c.data.limit = 144  # examples per dataset: 864 per full-data run
        c.cluster.probe_steps = 2  # 6 single + 15 pair probes: the interactions' cost grows with pairs
        c.cluster.dev_examples = 16
    elif arg == "full":
        pass
    elif arg == "smoke":
        c.data.limit = 48  # 8 held out for the learned weights; 20% of the other 40 = one batch of 8
        c.experiment.strategies = c.experiment.strategies.replace(",cluster_merging", "")  # 21 probe runs
        c.experiment.eval_tasks = "python_code_retrieval,tech_faq_retrieval"
    elif arg == "tiny":
        c.data.names = "debian_desc,python_code,debian_section"
        c.data.fixed_length = True
        c.checkpoint.every_steps = 100
        c.experiment.boom_ratio_sets = "50,100"
        # learned weights hold out 8 examples per dataset: too many for 16 (add boom_learned with
        # --config.data.limit=24)
        c.experiment.strategies = c.experiment.strategies.replace(",boom_learned", "").replace(",cluster_merging", "")
        c.incremental.old_datasets = "debian_desc,python_code"
        c.incremental.new_datasets = "debian_section"
        c.experiment.evaluate = False
    return c

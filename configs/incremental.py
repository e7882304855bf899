"""An incremental update on the built-in corpus from all-MiniLM-L6-v2.

The "existing" model is trained here on the old datasets (or given with
--config.incremental.existing=PATH: a model folder, train workdir or exported folder); the new
datasets arrive; an update model is trained on them plus a 40% historical subset of the old data,
merged into the existing model (Multi-SLERP 0.5/0.5), exported and evaluated beside a full retrain on
old + new data, with the training cost of each.

Arguments: `:smoke` (a tiny slice, a couple of minutes on CPU).
"""

from __future__ import annotations

import ml_collections

from configs import bag


def incremental_section() -> ml_collections.ConfigDict:
    inc = ml_collections.ConfigDict()
    inc.existing = ""  # "" = train the existing model here on the old datasets
    inc.old_datasets = "debian_desc,wordnet_gloss,python_code,bible_paraphrase"  # "" = all but the new
    inc.new_datasets = "debian_section,webster_wordnet"
    inc.history_ratio = 0.4
    inc.history_seed = 0
    inc.init_from = "base"  # "base" (the paper's choice) | "existing"
    # the merge of (existing, update) is config.merge (default Multi-SLERP, equal weights: 0.5 / 0.5)
    inc.compare_full_retrain = True
    inc.evaluate = True
    inc.eval_tasks = "builtin"
    return inc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = bag.get_config(arg)
    c.name = "incremental"
    del c["bag"]
    c.incremental = incremental_section()
    return c

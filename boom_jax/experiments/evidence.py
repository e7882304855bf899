"""The comparison's statistics: seed intervals per row, paired bootstraps against BLS, and the paper's
claims judged by them.

Input: one entry per seed with its dev scores ({label: {task: entry}}) and item scores ({label: {task:
item record}}, boom_jax.evaluation.items). Output (JSON-ready):

- per row and group (in-domain, out-of-domain, all): the per-seed means, their mean and Student-t 95%
  interval over seeds (`seed_interval`), and the bootstrap 95% interval over items and seeds;
- per row: the paired difference to the reference row (BLS) on each group, its bootstrap interval and
  p-value (`bootstrap_groups`: seeds, then every task's items, drawn once for all rows);
- verdicts on the paper's claims (PAPER.md): "holds" when the interval excludes zero in the claimed
  direction, "does not hold" when it excludes zero the other way, "cannot be told apart" otherwise;
  the incremental claim ("close to full retraining") holds when the interval lies above -1 point, does
  not hold when it lies wholly below, and cannot be told apart otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from boom_jax.evaluation.items import item_metric
from boom_jax.evaluation.report import summarize
from boom_jax.evaluation.significance import bootstrap_groups, excludes_zero, seed_interval

GROUPS = {"in_domain": "in-domain", "out_of_domain": "out-of-domain", "all": "all tasks"}
REFERENCE = "bls"
CLOSE_MARGIN = 0.01  # "close to full retraining": the difference's interval within +-1 point


def task_groups(tasks: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """in_domain / out_of_domain / all -> task names, from the entries' domains (empty groups dropped)."""
    groups = {"in_domain": sorted(t for t, e in tasks.items() if e["domain"] == "in"),
              "out_of_domain": sorted(t for t, e in tasks.items() if e["domain"] == "out"),
              "all": sorted(tasks)}
    return {g: names for g, names in groups.items() if names}


def _interval_dict(iv) -> dict:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n, "method": iv.method}


def seed_statistics(results: Sequence[Mapping[str, Mapping[str, Mapping]]]) -> dict[str, dict]:
    """label -> {"seeds": {group: [per-seed means]}, "interval": {group: mean and t interval over seeds}}."""
    per_seed = [summarize({k: v for k, v in r.items() if v}) for r in results]
    keys = {"in_domain": "in_domain_mean", "out_of_domain": "out_of_domain_mean", "all": "mean"}
    out: dict[str, dict] = {}
    for label in per_seed[0]:
        values = {g: [s[label][k] for s in per_seed if label in s and s[label][k] is not None] for g, k in keys.items()}
        values = {g: v for g, v in values.items() if v}
        out[label] = {"seeds": values, "interval": {g: _interval_dict(seed_interval(v)) for g, v in values.items()}}
    return out


def paired_statistics(results: Sequence[Mapping], items: Sequence[Mapping[str, Mapping[str, Mapping]]],
                      reference: str = REFERENCE, n_resamples: int = 2_000, seed: int = 0) -> dict:
    """The bootstrap over seeds and items of every row with item scores for every task in every seed.

    Returns {"rows": {label: {"interval": {group: ...}, "vs_reference": {group: difference, low, high,
    p_value, significant}}}, "excluded": {label: reason}, "tasks": {group: [tasks]}, "n_resamples": R}.
    """
    tasks = results[0][reference] if reference in results[0] else next(iter(results[0].values()))
    groups = task_groups(tasks)
    names = sorted(tasks)
    usable, excluded, n_items = {}, {}, {}
    for label in results[0]:
        per_seed = []
        for seed_items in items:
            records = (seed_items or {}).get(label) or {}
            if any(t not in records for t in names):
                break
            metrics = {}
            for t in names:
                n, metric = item_metric(records[t])
                if n_items.setdefault(t, n) != n:
                    raise ValueError(f"task {t}: {label} has {n} items where another row has {n_items[t]}")
                metrics[t] = metric
            per_seed.append(metrics)
        if len(per_seed) == len(items):
            usable[label] = per_seed
        else:
            excluded[label] = "no item scores for every task and seed (evaluated before items were saved?)"
    out = {"rows": {}, "excluded": excluded, "tasks": groups, "n_resamples": n_resamples}
    if not usable:
        return out
    boot = bootstrap_groups(usable, n_items, groups, n_resamples=n_resamples, seed=seed)
    for label in usable:
        row = {"interval": {g: _interval_dict(boot.interval(label, g)) for g in groups}}
        if reference in usable and label != reference:
            row["vs_reference"] = {}
            for g in groups:
                c = boot.compare(label, reference, g)
                row["vs_reference"][g] = {"difference": c.difference, "low": c.low, "high": c.high,
                                          "p_value": c.p_value, "significant": excludes_zero(c)}
        out["rows"][label] = row
    return out


def _verdict(comparison: Mapping, direction: int) -> str:
    """'holds' / 'does not hold' / 'cannot be told apart' for a claimed sign (+1: the row is better)."""
    if not comparison["significant"]:
        return "cannot be told apart"
    return "holds" if (comparison["difference"] > 0) == (direction > 0) else "does not hold"


def claims(paired: Mapping, rows: Sequence[Mapping]) -> list[dict]:
    """The paper's claims that the rows present can test, each with its evidence and verdict."""
    stats = paired.get("rows", {})
    labels = [r["label"] for r in rows if r["label"] in stats and "vs_reference" in stats[r["label"]]]
    out = []

    def add(claim: str, label: str, group: str, direction: int, verdict: str | None = None) -> None:
        c = stats[label]["vs_reference"][group]
        out.append({"claim": claim, "row": label, "group": group, "difference": c["difference"], "low": c["low"],
                    "high": c["high"], "p_value": c["p_value"], "verdict": verdict or _verdict(c, direction)})

    for label in (x for x in labels if x.startswith("boom_") and not x.endswith(("_cocktail", "_greedy"))):
        for group in ("in_domain", "out_of_domain"):
            if group in stats[label]["vs_reference"]:
                add(f"BOOM beats full-data BLS {GROUPS[group]}", label, group, +1)
    baselines = ("dataset_sequential", "task_sequential", "two_stage", "dataset_merging", "task_merging",
                 "cluster_merging")
    for label in (x for x in labels if x in baselines):
        add("BLS beats the sequential, two-stage and merging variants", label, "all", -1)
    if "incremental" in labels:
        c = stats["incremental"]["vs_reference"]["all"]
        # close (or better): the interval stays above -1 point; not close: wholly below it
        verdict = ("holds" if c["low"] > -CLOSE_MARGIN else "does not hold" if c["high"] < -CLOSE_MARGIN
                   else "cannot be told apart")
        add("an incremental update comes close to a full retrain (within 1 point, or better)", "incremental", "all",
            +1, verdict=verdict)
    return out

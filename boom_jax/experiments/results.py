"""RESULTS.md, results.json and charts of the comparison, from the saved cost records and dev scores.

Rows: one per reported model with its strategy, in-domain / out-of-domain / per-task-type means of
the built-in dev tasks' main scores (x 100), and its training cost (steps, examples, wall time; a
merged model costs the sum of its ingredients plus the merge). Every file is written to a temp name
and renamed, so a report is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from boom_jax.atomic_io import atomic_write, write_text
from boom_jax.boom.workflow import markdown_table
from boom_jax.evaluation.report import results_table, save_results, summarize
from boom_jax.experiments.plan import OPERATORS

RESULTS_MD = "RESULTS.md"
SUMMARY_JSON = "results.json"
CHARTS = {"in_vs_out": "charts/in_vs_out.png", "cost_vs_score": "charts/cost_vs_score.png"}


def scored_rows(rows: Sequence[dict], results: dict | None) -> list[dict]:
    """The rows with their means (None where a model was not evaluated)."""
    means = summarize({k: v for k, v in results.items() if v}) if results else {}
    out = []
    for row in rows:
        m = means.get(row["label"], {})
        out.append(dict(row, mean=m.get("mean"), in_domain=m.get("in_domain_mean"),
                        out_of_domain=m.get("out_of_domain_mean"), by_type=m.get("by_type", {})))
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def results_markdown(rows: Sequence[dict], config_summary: dict, command: str, notes: Sequence[str],
                     per_task: str | None) -> str:
    """The RESULTS.md text."""
    types = sorted({t for r in rows for t in r["by_type"]})
    lines = ["# BOOM comparison on the built-in corpus", "",
             "Strategies of the BOOM paper (PAPER.md) at small scale, all from the same base model with the same",
             "hyper-parameters. Scores: means of the built-in dev tasks' main scores (x 100).", "",
             "## Command", "", "```", command, "```", "", "## Sizes", ""]
    lines += [f"- {k}: {v}" for k, v in config_summary.items()]
    header = ["model", "strategy", "in-domain", "out-of-domain", *types, "all", "steps", "examples", "wall time (s)"]
    lines += ["", "## Results", ""] + markdown_table(header, [
        [r["label"], r["strategy"], _fmt(r["in_domain"]), _fmt(r["out_of_domain"]),
         *[_fmt(r["by_type"].get(t)) for t in types], _fmt(r["mean"]), r["steps"], r["examples"], f"{r['wall_time_s']:.1f}"]
        for r in rows], left=2)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if any(r["mean"] is not None for r in rows):
        lines += ["", "## Charts", "", f"![in-domain vs out-of-domain]({CHARTS['in_vs_out']})", "",
                  f"![training cost vs score]({CHARTS['cost_vs_score']})"]
    if per_task:
        body = per_task.split("\n", 2)[-1].replace("## ", "### ").replace("### Per task\n", "### Scores\n")
        lines += ["", "## Per task", "", body.strip()]
    return "\n".join(lines) + "\n"


def plot_in_vs_out(rows: Sequence[dict], path: str) -> None:
    """Grouped bars: in-domain and out-of-domain mean per model."""
    import matplotlib  # lazy: matplotlib (pyplot above all) is slow to import and only the charts need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["mean"] is not None]
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.2))
    for offset, key, name in ((-0.2, "in_domain", "in-domain"), (0.2, "out_of_domain", "out-of-domain")):
        values = np.array([np.nan if r[key] is None else 100 * r[key] for r in rows])
        bars = ax.bar(x + offset, values, 0.4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean main score (x 100)")
    ax.set_title("In-domain vs out-of-domain dev scores per strategy")
    finite = [100 * r[k] for r in rows for k in ("in_domain", "out_of_domain") if r[k] is not None]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 5))
    ax.legend(fontsize=8)
    _save_png(fig, path)


def _save_png(fig, path: str) -> None:
    """Lays the figure out, writes it atomically as PNG and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def plot_cost_vs_score(rows: Sequence[dict], path: str) -> None:
    """Scatter: training examples (x) vs in-domain and out-of-domain means (y), one point pair per model."""
    import matplotlib  # lazy: as in plot_in_vs_out

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["mean"] is not None]
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for key, marker, name in (("in_domain", "o", "in-domain"), ("out_of_domain", "s", "out-of-domain")):
        pts = [(r["examples"], 100 * r[key], r["label"]) for r in rows if r[key] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=name)
            for ex, score, label in pts:
                ax.annotate(label, (ex, score), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("training examples (sum over the models a merge needs)")
    ax.set_ylabel("mean main score (x 100)")
    ax.set_title("Training cost vs dev score")
    ax.legend(fontsize=8)
    _save_png(fig, path)


def _caps(eval_section) -> str:
    keys = ("max_queries", "max_documents", "max_texts", "max_seq_length")
    return ", ".join(f"{k} {eval_section.get(k)}" for k in keys if eval_section.get(k) is not None)


def config_summary(config, datasets: Sequence[Any], bag_dir: str) -> dict:
    """The sizes RESULTS.md states: model, data, batch, lengths, schedule settings, evaluation."""
    e = config.experiment
    return {
        "base model": config.model.path + (" (random init, sizes " + json.dumps(config.model.sizes.to_dict()) + ")"
                                           if config.model.random_init else ""),
        "training data": ", ".join(f"{d.name} ({d.task_type}, {d.size})" for d in datasets)
                         + f"; config.data.limit={config.data.limit} examples per dataset",
        "global batch / group size": f"{config.train.batch_size} queries, 1 positive + "
                                     f"{config.data.train_group_size - 1} hard negatives",
        "max lengths": f"query {config.data.query_max_len}, passage {config.data.passage_max_len} tokens",
        "optimizer": f"lr {config.train.learning_rate}, warmup {config.train.warmup_ratio}, "
                     f"{config.train.epochs} epoch(s), temperature {config.train.temperature}, seed {config.seed}",
        "BOOM": f"ratio sets {e.boom_ratio_sets} (percent), one bag in {bag_dir}, sampling {config.bag.sampling}, "
                f"merge {config.merge.method}, weights {config.merge.weights or 'equal'}",
        "orders": f"dataset order {e.dataset_order or 'as loaded'}; task order {e.task_order or 'retrieval first'}; "
                  f"two-stage stage 1 = {e.two_stage_first}",
        "evaluation": (f"{e.eval_tasks} dev tasks; caps (0 = none): {_caps(config.eval)}" if e.evaluate
                       else "not evaluated (config.experiment.evaluate=False)"),
    }


def result_notes(config, rows: Sequence[dict], records: dict) -> list[str]:
    """Explanations of the rows that reuse or combine other runs."""
    notes = []
    labels = {r["label"]: r for r in rows}
    if "bls" in labels and labels["bls"]["source"] == "r100":
        notes.append("`bls` is the BOOM bag's 100% member (r100): BLS on all the data, trained once and used twice.")
    for name in ("dataset_merging", "task_merging"):
        rec = records.get(name)
        if rec:
            notes.append(f"`{name}` merges {', '.join(rec['inputs'])} ({rec['method']}, equal weights); its cost "
                         "is their sum plus the merge. A task type with one dataset reuses that dataset's model.")
    operator_rows = {f"task_{op}" for op in OPERATORS}
    operators = [records[r["label"]] for r in rows if r["label"] in operator_rows and r["label"] in records]
    if operators:
        notes.append("Operator study (`task_<operator>`): the task-level models of `task_merging` merged with each "
                     "operator at mergekit's defaults, equal weights; task_arithmetic, ties, sce and model_stock work "
                     "on task vectors around the base model. " + "; ".join(
                         f"`{r['name']}` = {r['method']}" for r in operators))
    learned = [records[r["label"]] for r in rows if r["label"] in records and (records[r["label"]].get("learned") or {})]
    for rec in learned:
        info = rec["learned"]
        shown = ", ".join(f"{m} {w:.3f}" for m, w in zip(rec["inputs"], info["weights"]))
        notes.append(f"`{rec['name']}`: weights learned ({info['mode']}) on {info['heldout_examples']} held-out "
                     f"examples per dataset (held out of every run): {shown}; member held-out losses "
                     + ", ".join(f"{loss:.4f}" for loss in info["losses"]) + ".")
    boom = [r["label"] for r in rows if r["label"].startswith("boom_")]
    if boom:
        notes.append(f"{', '.join('`' + b + '`' for b in boom)} merge members of one bag; each row's cost is the "
                     "sum of its members plus its merge.")
    inc = records.get("incremental")
    if inc:
        existing = inc.get("existing") or {}
        full = inc.get("full_retrain")
        full_text = (f"a full retrain on old + new data cost {full['examples']} examples / {full['wall_time_s']:.1f} s"
                     if full else "its full-retrain reference is the `bls` row (BLS on old + new data)")
        notes.append(f"`incremental`: the existing model was trained on {', '.join(inc['old_datasets'])} "
                     f"({existing.get('examples', 0)} examples, {existing.get('wall_time_s', 0.0):.1f} s, paid before "
                     f"the update); new data {', '.join(inc['new_datasets'])}; the update model saw the new data + "
                     f"{inc['history_ratio']:.0%} of the old and was merged 0.5/0.5 ({inc['merge_weights']}). "
                     f"Its row's cost is the update plus the merge; {full_text}.")
    if "two_stage" in labels:
        notes.append(f"`two_stage`: stage 1 = {config.experiment.two_stage_first}, stage 2 = the rest, BLS within each.")
    notes.append("Examples = steps x global batch; wall times were measured on the machine that ran the experiment.")
    return notes


def write_results(workdir: str, config, rows: Sequence[dict], results: dict | None, records: dict, command: str,
                  datasets: Sequence[Any], bag_dir: str) -> dict:
    """Writes DIR/results.json, DIR/RESULTS.md and (with scores) DIR/charts/*.png; returns the summary."""
    scored = scored_rows(rows, results)
    summary = {"rows": scored, "records": records, "command": command,
               "sizes": config_summary(config, datasets, bag_dir), "scores": results or {}}
    write_text(os.path.join(workdir, SUMMARY_JSON), json.dumps(summary, indent=2, sort_keys=True, default=str))
    per_task = None
    if results:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        save_results(results, os.path.join(workdir, "eval", "all_results.json"))
        per_task = results_table(results)
        plot_in_vs_out(scored, os.path.join(workdir, CHARTS["in_vs_out"]))
        plot_cost_vs_score(scored, os.path.join(workdir, CHARTS["cost_vs_score"]))
    text = results_markdown(scored, summary["sizes"], command, result_notes(config, scored, records), per_task)
    write_text(os.path.join(workdir, RESULTS_MD), text)
    return summary

"""RESULTS.md, results.json and charts of the comparison, from the saved cost records and dev scores.

Rows: one per reported model with its strategy, in-domain / out-of-domain / per-task-type means of
the built-in dev tasks' main scores (x 100; with several seeds the mean over seeds +- the half-width
of its 95% interval over seeds), and its training cost (steps, examples, wall time; a merged model
costs the sum of its ingredients plus the merge). With item scores, a second table gives each row's
paired difference to BLS with its bootstrap interval and p-value (boom_jax.experiments.evidence), and
the paper's claims are judged by them. Every file is written to a temp name and renamed, so a report
is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from boom_jax.atomic_io import atomic_write, write_text
from boom_jax.boom.workflow import markdown_table
from boom_jax.evaluation.report import results_table, save_results, summarize
from boom_jax.experiments.evidence import GROUPS, REFERENCE, claims, paired_statistics, seed_statistics
from boom_jax.experiments.plan import OPERATORS

RESULTS_MD = "RESULTS.md"
SUMMARY_JSON = "results.json"
CHARTS = {"in_vs_out": "charts/in_vs_out.png", "cost_vs_score": "charts/cost_vs_score.png",
          "vs_bls": "charts/vs_bls.png"}


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def scored_rows(rows: Sequence[dict], results: dict | Sequence[dict] | None,
                stats: Mapping[str, dict] | None = None) -> list[dict]:
    """The rows with their means (None where a model was not evaluated); with one results dict per
    seed, the means over seeds, and `half` = {group: half-width of the 95% interval over seeds} from
    `stats` (evidence.seed_statistics of those results)."""
    per_seed = [results] if isinstance(results, Mapping) else list(results or [])
    means = [summarize({k: v for k, v in r.items() if v}) for r in per_seed if r]
    stats = (stats or {}) if len(means) > 1 else {}
    out = []
    for row in rows:
        ms = [m[row["label"]] for m in means if row["label"] in m]
        types = sorted({t for m in ms for t in m["by_type"]})
        # a row that trains nothing (the pretrained model) has no seeds to vary over
        half = {g: (iv["high"] - iv["low"]) / 2 for g, iv in stats.get(row["label"], {}).get("interval", {}).items()
                if row.get("steps")}
        out.append(dict(row, mean=_mean_or_none([m["mean"] for m in ms]),
                        in_domain=_mean_or_none([m["in_domain_mean"] for m in ms]),
                        out_of_domain=_mean_or_none([m["out_of_domain_mean"] for m in ms]),
                        by_type={t: _mean_or_none([m["by_type"].get(t) for m in ms]) for t in types}, half=half))
    return out


def _fmt(x: float | None, half: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f}" + ("" if half is None or half != half else f" ± {100 * half:.2f}")


def _signed(x: float) -> str:
    return f"{100 * x:+.2f}"


def comparison_lines(scored: Sequence[dict], paired: Mapping, seeds: Sequence[int]) -> list[str]:
    """The paired-comparison section: each row's means with bootstrap intervals and its difference to BLS."""
    stats = paired.get("rows", {})
    if REFERENCE not in stats:
        return []
    groups = list(paired["tasks"])
    header = ["model"]
    for g in groups:
        header += [f"{GROUPS[g]} [95% CI]", f"Δ {GROUPS[g]} vs {REFERENCE} [95% CI]", "p"]
    table = []
    for row in scored:
        st = stats.get(row["label"])
        if st is None:
            continue
        cells = [row["label"]]
        for g in groups:
            iv = st["interval"][g]
            cells.append(f"{100 * iv['mean']:.2f} [{100 * iv['low']:.2f}, {100 * iv['high']:.2f}]")
            c = st.get("vs_reference", {}).get(g)
            if c is None:
                cells += ["(reference)", ""]
            else:
                mark = "*" if c["significant"] else ""
                cells += [f"{_signed(c['difference'])} [{_signed(c['low'])}, {_signed(c['high'])}]{mark}",
                          f"{c['p_value']:.3f}"]
        table.append(cells)
    widths = {g: [(st["interval"][g]["high"] - st["interval"][g]["low"]) / 2 for st in stats.values()] for g in groups}
    diffs = {g: [(st["vs_reference"][g]["high"] - st["vs_reference"][g]["low"]) / 2
                 for st in stats.values() if "vs_reference" in st] for g in groups}
    lines = ["", f"## Paired comparisons against {REFERENCE}", "",
             f"Bootstrap over seeds ({len(seeds)}) and evaluation items ({paired['n_resamples']} resamples, the same "
             "draws for every row, so differences are paired): items are the queries of retrieval tasks, the test "
             "texts of classification, the pairs of pair classification and mteb's text subsets of clustering "
             "(boom_jax.evaluation.items). `*`: the difference's 95% interval excludes zero.", ""]
    lines += markdown_table(header, table, left=1)
    lines += ["", "Achieved 95% interval half-widths (points): " + "; ".join(
        f"{GROUPS[g]} means {100 * min(widths[g]):.2f}-{100 * max(widths[g]):.2f}"
        + (f", differences to {REFERENCE} {100 * min(diffs[g]):.2f}-{100 * max(diffs[g]):.2f}" if diffs[g] else "")
        for g in groups) + "."]
    if paired.get("excluded"):
        lines += ["", "Not compared (no item scores): " + ", ".join(f"`{k}` ({v})" for k, v in paired["excluded"].items())]
    return lines


def claim_lines(verdicts: Sequence[Mapping]) -> list[str]:
    """The claims section: one line per tested claim with its evidence."""
    if not verdicts:
        return []
    lines = ["", "## The paper's claims at this size", ""]
    for v in verdicts:
        lines.append(f"- {v['claim']} (`{v['row']}` vs `{REFERENCE}`, {GROUPS[v['group']]}): **{v['verdict']}** "
                     f"({_signed(v['difference'])} points, 95% CI [{_signed(v['low'])}, {_signed(v['high'])}], "
                     f"p = {v['p_value']:.3f})")
    counts = {k: sum(v["verdict"] == k for v in verdicts) for k in ("holds", "does not hold", "cannot be told apart")}
    lines += ["", f"Of {len(verdicts)} tested comparisons: {counts['holds']} hold, {counts['does not hold']} do not "
              f"hold, {counts['cannot be told apart']} cannot be told apart at this size."]
    return lines


def results_markdown(rows: Sequence[dict], config_summary: dict, command: str, notes: Sequence[str],
                     per_task: str | None, evidence: Sequence[str] = ()) -> str:
    """The RESULTS.md text (`evidence`: the comparison and claims sections, when there are item scores)."""
    types = sorted({t for r in rows for t in r["by_type"]})
    lines = ["# BOOM comparison on the built-in corpus", "",
             "Strategies of the BOOM paper (PAPER.md) at small scale, all from the same base model with the same",
             "hyper-parameters. Scores: means of the built-in dev tasks' main scores (x 100).", "",
             "## Command", "", "```", command, "```", "", "## Sizes", ""]
    lines += [f"- {k}: {v}" for k, v in config_summary.items()]
    header = ["model", "strategy", "in-domain", "out-of-domain", *types, "all", "steps", "examples", "wall time (s)"]
    lines += ["", "## Results", ""] + markdown_table(header, [
        [r["label"], r["strategy"], _fmt(r["in_domain"], r.get("half", {}).get("in_domain")),
         _fmt(r["out_of_domain"], r.get("half", {}).get("out_of_domain")),
         *[_fmt(r["by_type"].get(t)) for t in types], _fmt(r["mean"], r.get("half", {}).get("all")),
         r["steps"], r["examples"], f"{r['wall_time_s']:.1f}"]
        for r in rows], left=2)
    if any(r.get("half") for r in rows):
        lines += ["", "In-domain, out-of-domain and all: mean over seeds ± the half-width of its 95% interval over "
                  "seeds (Student t); per-type columns: means over seeds."]
    lines += list(evidence)
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if any(r["mean"] is not None for r in rows):
        lines += ["", "## Charts", "", f"![in-domain vs out-of-domain]({CHARTS['in_vs_out']})", "",
                  f"![training cost vs score]({CHARTS['cost_vs_score']})"]
        if evidence:
            lines += ["", f"![difference to {REFERENCE}]({CHARTS['vs_bls']})"]
    if per_task:
        lines += ["", "## Per task", "", per_task.strip()]
    return "\n".join(lines) + "\n"


def per_task_section(results: Sequence[dict], seeds: Sequence[int]) -> str:
    """Main score of every task per model: one table per seed (the per-seed scores are kept)."""
    if len(results) == 1:
        return results_table(results[0]).split("\n", 2)[-1].replace("## ", "### ").replace("### Per task\n", "### Scores\n")
    parts = []
    for seed, r in zip(seeds, results):
        body = results_table(r).split("\n", 2)[-1].split("## Per task type")[0]
        parts.append(body.replace("## Per task\n", f"### Seed {seed}\n").strip())
    return "\n\n".join(parts)


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
        half = np.array([100 * r.get("half", {}).get(key, np.nan) for r in rows])
        bars = ax.bar(x + offset, values, 0.4, label=name,
                      yerr=half if np.isfinite(half).any() else None, capsize=2)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean main score (x 100)")
    ax.set_title("In-domain vs out-of-domain dev scores per strategy"
                 + (" (bars: 95% interval over seeds)" if any(r.get("half") for r in rows) else ""))
    finite = [100 * r[k] for r in rows for k in ("in_domain", "out_of_domain") if r[k] is not None]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 5))
    ax.legend(fontsize=8)
    _save_png(fig, path)


def plot_differences(paired: Mapping, order: Sequence[str], path: str) -> None:
    """Forest plot: each row's difference to BLS (points) with its 95% bootstrap interval, per group, on an
    axis scaled to the differences (a 0-100 axis would hide them)."""
    import matplotlib  # lazy: as in plot_in_vs_out

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = paired["rows"]
    labels = [x for x in order if "vs_reference" in stats.get(x, {})]
    groups = list(paired["tasks"])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) * len(groups) + 1.5))
    y = np.arange(len(labels))
    for k, g in enumerate(groups):
        offset = (k - (len(groups) - 1) / 2) * 0.25
        c = [stats[x]["vs_reference"][g] for x in labels]
        mid = np.array([100 * v["difference"] for v in c])
        err = np.array([[100 * (v["difference"] - v["low"]) for v in c], [100 * (v["high"] - v["difference"]) for v in c]])
        ax.errorbar(mid, y + offset, xerr=err, fmt="o", capsize=3, label=GROUPS[g], markersize=4)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference to {REFERENCE} (points, 95% bootstrap interval over seeds and items)")
    ax.set_title(f"Each strategy minus {REFERENCE}")
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
        bls = labels.get("bls")
        if full:
            full_text = f"a full retrain on old + new data cost {full['examples']} examples / {full['wall_time_s']:.1f} s"
        elif bls and bls.get("examples"):
            full_text = (f"its full-retrain reference is the `bls` row (BLS on old + new data: {bls['examples']} "
                         f"examples, {bls['wall_time_s']:.1f} s), so the update cost "
                         f"{inc['examples'] / bls['examples']:.0%} of its examples and "
                         f"{inc['wall_time_s'] / max(bls['wall_time_s'], 1e-9):.0%} of its wall time")
        else:
            full_text = "its full-retrain reference is the `bls` row (BLS on old + new data)"
        notes.append(f"`incremental`: the existing model was trained on {', '.join(inc['old_datasets'])} "
                     f"({existing.get('examples', 0)} examples, {existing.get('wall_time_s', 0.0):.1f} s, paid before "
                     f"the update); new data {', '.join(inc['new_datasets'])}; the update model saw the new data + "
                     f"{inc['history_ratio']:.0%} of the old and was merged 0.5/0.5 ({inc['merge_weights']}). "
                     f"Its row's cost is the update plus the merge; {full_text}.")
    if "incremental_existing" in labels:
        notes.append("`incremental_existing` is the incremental row's existing model (old data only), scored to show "
                     "what the update adds.")
    cluster = records.get("cluster_merging")
    if cluster:
        notes.append(f"`cluster_merging`: datasets grouped by their measured interactions (short probe runs per "
                     f"dataset and per pair, {cluster['probe_steps']} steps in all, {cluster['probe_wall_time_s']:.1f} s) "
                     f"into {len(cluster['clusters'])} clusters ("
                     + "; ".join(", ".join(c) for c in cluster["clusters"])
                     + "), one model per cluster, merged; its cost includes the probes. With several seeds the "
                     "probes (from the base model, on a fixed dev split) are run once and shared, so every seed "
                     "has these clusters and retrains the cluster models.")
    if "two_stage" in labels:
        notes.append(f"`two_stage`: stage 1 = {config.experiment.two_stage_first}, stage 2 = the rest, BLS within each.")
    notes.append("Examples = steps x global batch; wall times were measured on the machine that ran the experiment.")
    return notes


def combined_rows(runs: Sequence[Mapping]) -> list[dict]:
    """The rows of the first seed, their wall time the mean over seeds (steps and examples are the same
    for every seed) with each seed's in `wall_time_s_per_seed`."""
    rows = []
    for k, row in enumerate(runs[0]["rows"]):
        times = [run["rows"][k]["wall_time_s"] for run in runs]
        rows.append(dict(row, wall_time_s=float(np.mean(times)), wall_time_s_per_seed=times))
    return rows


def write_results(workdir: str, config, runs: Sequence[Mapping], command: str) -> dict:
    """Writes DIR/results.json, DIR/RESULTS.md and (with scores) DIR/charts/*.png; returns the summary.

    `runs`: one entry per seed (boom_jax.experiments.runner.run_seed): seed, rows, records, results (dev
    scores or None), items (item scores or None), bag_dir, datasets.
    """
    seeds = [run["seed"] for run in runs]
    rows = combined_rows(runs)
    results = [run["results"] for run in runs if run["results"]]
    stats = seed_statistics(results) if results else {}
    scored = scored_rows(rows, results, stats)
    records = runs[0]["records"]
    items = [run.get("items") for run in runs]
    paired = (paired_statistics(results, items, n_resamples=int(config.experiment.get("bootstrap_resamples", 2000)))
              if results and all(items) else {})
    verdicts = claims(paired, scored) if paired else []
    bag_dir = runs[0]["bag_dir"] if len(runs) == 1 else os.path.join(workdir, "seed_<seed>", "boom") + " (one per seed)"
    sizes = config_summary(config, runs[0]["datasets"], bag_dir)
    sizes["seeds"] = (f"{len(seeds)} ({', '.join(map(str, seeds))}): training seed and bag sampling seed per run"
                      if len(seeds) > 1 else f"1 ({seeds[0]})")
    if paired.get("tasks"):
        counts = {g: len(t) for g, t in paired["tasks"].items()}
        sizes["dev tasks"] = ", ".join(f"{GROUPS[g]} {n}" for g, n in counts.items())
    summary = {"rows": scored, "records": records, "command": command, "sizes": sizes, "seeds": seeds,
               "scores": results[0] if len(results) == 1 else results, "per_seed_records": [r["records"] for r in runs],
               "seed_statistics": stats, "paired": paired, "claims": verdicts}
    write_text(os.path.join(workdir, SUMMARY_JSON), json.dumps(summary, indent=2, sort_keys=True, default=str))
    per_task = None
    if results:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        for seed, r in zip(seeds, results):
            save_results(r, os.path.join(workdir, "eval", "all_results.json" if len(results) == 1
                                         else f"all_results_seed_{seed}.json"))
        per_task = per_task_section(results, seeds)
        plot_in_vs_out(scored, os.path.join(workdir, CHARTS["in_vs_out"]))
        plot_cost_vs_score(scored, os.path.join(workdir, CHARTS["cost_vs_score"]))
        if paired.get("rows"):
            plot_differences(paired, [r["label"] for r in scored], os.path.join(workdir, CHARTS["vs_bls"]))
    evidence = [*comparison_lines(scored, paired, seeds), *claim_lines(verdicts)] if paired else []
    text = results_markdown(scored, sizes, command, result_notes(config, scored, records), per_task, evidence)
    write_text(os.path.join(workdir, RESULTS_MD), text)
    return summary

"""Evaluation reports: results.json, a Markdown table and a bar chart comparing models.

`results` is {model label: {task name: {"main_score": float in [0, 1], "metric": str, "type": str,
"domain": "in" | "out", ...}}}. Tables and charts show scores x 100. Every file is written to a
temporary name and renamed, so a report is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from boom_jax.atomic_io import atomic_write

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
CHART_FILE = "chart.png"
REQUIRED_FIELDS = ("main_score", "type", "domain")

Results = Mapping[str, Mapping[str, Mapping]]


def validate_results(results: Results, source: str = "results") -> None:
    """Raise ValueError naming the model, task and field of the first malformed entry."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"{source}: expected a non-empty mapping model -> task -> scores")
    for model, tasks in results.items():
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError(f"{source}: model {model!r} has no task results")
        for task, entry in tasks.items():
            missing = [f for f in REQUIRED_FIELDS if f not in entry]
            if missing:
                raise ValueError(f"{source}: model {model!r}, task {task!r}: missing field(s) {missing}")
            if not isinstance(entry["main_score"], (int, float)):
                raise ValueError(f"{source}: model {model!r}, task {task!r}: main_score is not a number")
            if entry["domain"] not in ("in", "out"):
                raise ValueError(f"{source}: model {model!r}, task {task!r}: domain must be 'in' or 'out'")


def save_results(results: Results, path: str | os.PathLike) -> None:
    """Write results as JSON (atomically)."""
    validate_results(results)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=False)

    atomic_write(os.fspath(path), write)


def load_results(path: str | os.PathLike) -> dict:
    """Read results.json (or a folder holding it) and check its shape."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no results file")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
    validate_results(results, source=path)
    return results


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(results: Results) -> dict[str, dict]:
    """Per model: mean over all tasks, in-domain and out-of-domain means, and the mean per task type."""
    validate_results(results)
    out = {}
    for model, tasks in results.items():
        scores = [(e["main_score"], e["type"], e["domain"]) for e in tasks.values()]
        types = sorted({t for _, t, _ in scores})
        out[model] = {
            "mean": _mean([s for s, _, _ in scores]),
            "in_domain_mean": _mean([s for s, _, d in scores if d == "in"]),
            "out_of_domain_mean": _mean([s for s, _, d in scores if d == "out"]),
            "num_tasks": len(scores),
            "by_type": {t: _mean([s for s, tt, _ in scores if tt == t]) for t in types},
        }
    return out


def _fmt(score: float | None) -> str:
    return "–" if score is None else f"{100 * score:.2f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def results_table(results: Results) -> str:
    """A Markdown report: scores per task, means per task type, overall / in-domain / out-of-domain means."""
    summary = summarize(results)
    models = list(results)
    tasks: dict[str, Mapping] = {}
    for model_tasks in results.values():
        for name, entry in model_tasks.items():
            tasks.setdefault(name, entry)
    ordered = sorted(tasks, key=lambda n: (tasks[n]["domain"], tasks[n]["type"], n))
    lines = ["# Evaluation results", "", "Main score of each task (x 100).", "", "## Per task", ""]
    lines += [_row(["task", "type", "domain", "metric", *models]), _row(["---"] * (4 + len(models)))]
    for name in ordered:
        e = tasks[name]
        cells = [_fmt(results[m][name]["main_score"]) if name in results[m] else "–" for m in models]
        lines.append(_row([name, e["type"], e["domain"], e.get("metric", ""), *cells]))
    types = sorted({e["type"] for e in tasks.values()})
    lines += ["", "## Per task type (mean)", "", _row(["task type", *models]), _row(["---"] * (1 + len(models)))]
    for t in types:
        lines.append(_row([t, *[_fmt(summary[m]["by_type"].get(t)) for m in models]]))
    lines += ["", "## Means", "", _row(["model", "tasks", "mean", "in-domain mean", "out-of-domain mean"]),
              _row(["---"] * 5)]
    for m in models:
        s = summary[m]
        lines.append(_row([m, s["num_tasks"], _fmt(s["mean"]), _fmt(s["in_domain_mean"]), _fmt(s["out_of_domain_mean"])]))
    return "\n".join(lines) + "\n"


def plot_results(results: Results, path: str | os.PathLike) -> None:
    """Grouped bar chart (PNG): for each group (all tasks, in-domain, out-of-domain, each task type) one bar per
    model; with several models a second panel shows each model's difference from the first (e.g. the base
    model), on an axis scaled to those differences, which the 0-100 panel would hide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    models = list(results)
    types = sorted({t for s in summary.values() for t in s["by_type"]})
    groups = [("all tasks", "mean"), ("in-domain", "in_domain_mean"), ("out-of-domain", "out_of_domain_mean")]
    groups = [g for g in groups if any(summary[m][g[1]] is not None for m in models)]
    labels = [g[0] for g in groups] + types
    values = np.array(
        [[summary[m][key] for _, key in groups] + [summary[m]["by_type"].get(t) for t in types] for m in models],
        dtype=float,
    )  # None -> nan: no bar
    width = 0.8 / len(models)
    diff_panel = len(models) > 1
    fig, axes = plt.subplots(2 if diff_panel else 1, 1, squeeze=False,
                             figsize=(max(6.0, 1.2 * len(labels) * max(1, len(models)) ** 0.5), 7.5 if diff_panel else 4.0))
    ax = axes[0, 0]
    x = np.arange(len(labels))
    for i, model in enumerate(models):
        bars = ax.bar(x - 0.4 + width * (i + 0.5), 100 * values[i], width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("mean main score (x 100)")
    ax.set_title("Evaluation: mean scores per model")
    ax.legend(fontsize=8)
    ax.set_ylim(0, min(100.0, np.nanmax(100 * values) * 1.15 + 1) if np.isfinite(values).any() else 100.0)
    if diff_panel:
        dx = axes[1, 0]
        delta = 100 * (values[1:] - values[:1])
        dwidth = 0.8 / (len(models) - 1)
        for i, model in enumerate(models[1:], start=1):
            bars = dx.bar(x - 0.4 + dwidth * (i - 0.5), delta[i - 1], dwidth, label=model, color=f"C{i}")
            dx.bar_label(bars, fmt="%+.2f", fontsize=7, padding=1)
        dx.axhline(0.0, color="black", linewidth=0.8)
        dx.set_xticks(x, labels, rotation=20, ha="right")
        dx.set_ylabel(f"difference from {models[0]} (points)")
        dx.set_title(f"Difference from {models[0]}")
        span = np.nanmax(np.abs(delta)) if np.isfinite(delta).any() else 0.0
        dx.set_ylim(-1.25 * span - 0.05, 1.25 * span + 0.05)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=120, format="png")

    try:
        atomic_write(os.fspath(path), write)
    finally:
        plt.close(fig)


def write_report(results: Results, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write results.json, table.md and chart.png into out_dir; returns their paths."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in (RESULTS_FILE, TABLE_FILE, CHART_FILE)}
    save_results(results, paths[RESULTS_FILE])
    table = results_table(results)

    def write_table(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(table)

    atomic_write(paths[TABLE_FILE], write_table)
    plot_results(results, paths[CHART_FILE])
    return paths

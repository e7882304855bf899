"""The steps every BOOM workflow is a plan of (bag, incremental update, clusters, experiments).

- `run_config(config, name, updates, drop)`: one run's training config, derived from the workflow's.
- `ensure_trained(...)`: trains a run in its folder, resumes it when it was interrupted (the loop's
  checkpoints), or skips it when its record file says it finished; returns that record.
- `merge_and_export(...)`: learned weights when config.merge asks for them, the merge into a model
  folder (with its recipe.yml) and, optionally, its sentence-transformers export.
- `evaluate(config, models, out, tasks)`: dev scores of the named models, the training base first.
- `scored`, `score_table`, `markdown_table`, `write_summary`: the one summary writer (summary.md, summary.json).
- `log(tag, message)`: progress lines `[tag] message` through absl logging, on process 0 only.

A record is a JSON file in the run's folder, written last (atomically), so its presence means the
run finished: re-running a workflow reuses it instead of training again.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging

from boom_jax.atomic_io import write_json, write_text
from boom_jax.boom.merge_config import MergeSpec, merge
from boom_jax.boom.merge_weights import learn_weights
from boom_jax.data.records import TrainDataset
from boom_jax.errors import ConfigError
from boom_jax.evaluation.report import summarize
from boom_jax.evaluation.runner import evaluate_dev
from boom_jax.hf import export_sentence_transformers
from boom_jax.model_io import load_model
from boom_jax.training.distributed import is_main_process
from boom_jax.training.loop import train
from boom_jax.training.metrics import read_metrics
from boom_jax.training.model_setup import resolve_model_path

# A run a workflow trains for its own use: no export of its own, no dev evaluation during training.
PLAIN_RUN = {"export.sentence_transformers": False, "eval.every_steps": 0, "eval.at_end": False}


def log(tag: str, message: str) -> None:
    """`[tag] message` at INFO, on process 0 only (every host runs the workflow)."""
    if is_main_process():
        logging.info("[%s] %s", tag, message)


def run_config(config: ml_collections.ConfigDict, name: str, updates: Mapping[str, Any] | None = None,
               drop: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A copy of `config` named '<config.name>/<name>', without the sections in `drop` and with
    `updates` ({"section.key": value}) applied."""
    c = copy.deepcopy(config)
    with c.unlocked():
        for section in drop:
            if section in c:
                del c[section]
        c.name = f"{config.name}/{name}"
        for key, value in (updates or {}).items():
            *path, field = key.split(".")
            node = c
            for part in path:
                node = node[part]
            node[field] = value
    return c


def read_record(path: str) -> dict | None:
    """The JSON record at `path`, or None when the run has not finished."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


ATTEMPTS_FILE = "attempts.json"


def record_attempt(run_dir: str, wall_time_s: float, steps: int) -> list[dict]:
    """Appends one training attempt (wall time, step reached) to run_dir/attempts.json and returns them
    all: a run stopped (SIGTERM, preemption) and resumed costs the sum of its attempts. An attempt
    killed outright (SIGKILL) leaves no entry."""
    path = os.path.join(run_dir, ATTEMPTS_FILE)
    attempts = read_record(path) or {"attempts": []}
    attempts["attempts"].append({"wall_time_s": round(float(wall_time_s), 2), "steps": int(steps)})
    write_json(path, attempts)
    return attempts["attempts"]


def last_logged_loss(run_dir: str) -> float:
    """The last training loss in run_dir/metrics.jsonl (NaN when none was logged)."""
    losses = [row["loss"] for row in read_metrics(run_dir) if row.get("loss") is not None]
    return float(losses[-1]) if losses else float("nan")


def ensure_trained(config: ml_collections.ConfigDict, run_dir: str, datasets: Sequence[TrainDataset], *,
                   record_file: str, tag: str, label: str, detail: str = "", subset: Any = None,
                   fields: Mapping[str, Any] | None = None, check: Callable[[dict], None] | None = None,
                   after: Callable[[str], Mapping[str, Any]] | None = None) -> dict:
    """Trains `config` in `run_dir` on `datasets` (through `subset`), or skips it when
    run_dir/record_file exists (`check(record)` raises when that record does not fit this run).

    The record: `fields`, then steps, examples, wall_time_s (the sum over its attempts: a preempted run
    exits, re-run to resume), final_loss (the last step's; for a run resumed after its last step, the
    last logged one), attempts, model (run_dir/model) and what `after(model)` adds (e.g. dev losses),
    written last.
    """
    path = os.path.join(run_dir, record_file)
    record = read_record(path)
    if record is not None:
        if check is not None:
            check(record)
        log(tag, f"{label} already finished ({record['steps']} steps); skipping")
        return record
    log(tag, f"training {label}{detail}")
    start = time.time()
    result = train(config, run_dir, datasets=list(datasets), subset=subset)
    attempts = record_attempt(run_dir, time.time() - start, int(result.steps))
    if result.preempted:
        raise SystemExit(f"[{tag}] {label} was preempted at step {result.steps}; re-run to resume")
    model = os.path.join(run_dir, "model")
    final_loss = float(result.final_loss)
    if math.isnan(final_loss):  # resumed after its last step: no step ran in this attempt
        final_loss = last_logged_loss(run_dir)
    record = {**(fields or {}), "steps": int(result.steps),
              "examples": int(result.steps) * int(config.train.batch_size),
              "wall_time_s": round(sum(a["wall_time_s"] for a in attempts), 2), "final_loss": final_loss,
              "model": model, "attempts": len(attempts)}
    if after is not None:
        record.update(after(model))
    write_json(path, record)
    return record


def export_model(model_folder: str, out: str) -> None:
    """The model folder as a sentence-transformers folder `out` (replaced when it exists)."""
    cfg, params, tokenizer_dir = load_model(model_folder)
    export_sentence_transformers(params, cfg, tokenizer_dir, out, overwrite=True)


def merge_and_export(config: ml_collections.ConfigDict, spec: MergeSpec, models: Mapping[str, str], out: str,
                     workdir: str, *, tag: str, heldout: Sequence[TrainDataset] | None = None,
                     export: str | None = None) -> dict:
    """Merges `models` ({name: path}) into the model folder `out` as `spec` says, exported to `export`
    when given. Learned weights (spec.auto) are scored on `heldout`. Returns the merge record (method,
    weights used, ...) with wall_time_s covering the learning, the merge and the export, and the
    learned weights' record under "learned"."""
    start = time.time()
    paths = list(models.values())
    learned = None
    if spec.auto:
        if heldout is None:
            raise ConfigError("learned merge weights (config.merge.weights=auto:...) need held-out examples that no "
                              "merged model trained on: run the whole workflow")
        learned = learn_weights(config, spec, paths, heldout, workdir)
        log(tag, f"learned merge weights ({spec.auto}): "
            + ", ".join(f"{name} {w:.3f}" for name, w in zip(models, learned["weights"])))
    record = merge(config, spec, paths, out, workdir, weights=None if learned is None else learned["weights"])
    if export:
        export_model(out, export)
    record["wall_time_s"] = round(time.time() - start, 2)
    if learned is not None:
        record["learned"] = learned
    return record


def with_base(config: ml_collections.ConfigDict, models: Mapping[str, str]) -> dict[str, str]:
    """{"base": the training base model (unless a random init), **models}."""
    out = {} if config.model.random_init else {"base": resolve_model_path(config.model.path)}
    out.update(models)
    return out


def evaluate(config: ml_collections.ConfigDict, models: Mapping[str, str], out: str, tasks: str) -> dict:
    """Dev scores of the base model and `models` in the folder `out` (evaluation.runner.evaluate_dev)."""
    return evaluate_dev(config, with_base(config, models), out, tasks)


def fmt_score(x: float | None) -> str:
    """A mean main score x 100, '-' when the model was not evaluated."""
    return "-" if x is None else f"{100 * x:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> list[str]:
    """The lines of a Markdown table: the first `left` columns left-aligned, the others right."""
    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * left + "---:|" * (len(header) - left), *(line(r) for r in rows)]


def scored(costs: Sequence[Mapping[str, Any]], results: Mapping | None) -> list[dict]:
    """Each cost row ({"model", ...}) with its dev means: in_domain, out_of_domain, mean (None: not scored)."""
    means = summarize(results) if results else {}
    rows = []
    for c in costs:
        m = means.get(c["model"], {})
        rows.append(dict(c, in_domain=m.get("in_domain_mean"), out_of_domain=m.get("out_of_domain_mean"),
                         mean=m.get("mean")))
    return rows


def score_table(rows: Sequence[Mapping[str, Any]], step_header: str = "steps") -> list[str]:
    """The Markdown table of `scored` rows: model, steps, examples, wall time and the dev means (x 100)."""
    header = ["model", step_header, "examples", "wall time (s)", "in-domain", "out-of-domain", "all"]
    return markdown_table(header, [[r["model"], r["steps"], r["examples"], f"{r['wall_time_s']:.1f}",
                                    fmt_score(r["in_domain"]), fmt_score(r["out_of_domain"]), fmt_score(r["mean"])]
                                   for r in rows])


def write_summary(workdir: str, tag: str, lines: Sequence[str], summary: Mapping[str, Any] | None = None) -> None:
    """DIR/summary.md from `lines` (and DIR/summary.json from `summary`), shown in the log."""
    if summary is not None:
        write_json(os.path.join(workdir, "summary.json"), summary)
    text = "\n".join(lines) + "\n"
    write_text(os.path.join(workdir, "summary.md"), text)
    log(tag, f"summary ({os.path.join(workdir, 'summary.md')}):\n{text}")

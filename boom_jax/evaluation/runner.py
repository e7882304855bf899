"""Run models on tasks: mteb for the full evaluation, NumPy metrics for the fast dev evaluation.

`evaluate_models(models, tasks, out_dir)` scores each model (a JAX `Encoder`, a model folder, a train
workdir, an HF folder, or an exported sentence-transformers folder) on mteb tasks, the built-in
offline tasks or any `EvalTask`s, and writes mteb's per-task result files plus the report
(results.json, table.md, chart.png). `evaluate_builtin_retrieval(encoder, tasks)` is the cheap path
the training loop uses: nDCG@10 of the retrieval tasks, computed directly.
"""

from __future__ import annotations

import copy
import json
import dataclasses
import difflib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm

from boom_jax.atomic_io import write_json, write_text
from boom_jax.data.builtin import builtin_eval_tasks, builtin_manifest
from boom_jax.data.records import EvalTask
from boom_jax.evaluation import metrics
from boom_jax.evaluation.items import items_path, read_predictions, task_items
from boom_jax.evaluation.report import write_report
from boom_jax.evaluation.subsample import TaskCaps, subsample_task
from boom_jax.evaluation.tasks import SPLIT, TYPE_FROM_MTEB, task_metadata, to_mteb_task
from boom_jax.hf.encoders import load_encoder
from boom_jax.model_io import ModelFolderError
from boom_jax.models.encoder import Encoder
from boom_jax.training.provenance import find_provenance

BUILTIN_SELECTORS = {"builtin": None, "builtin_in": "in", "builtin_out": "out"}
# Benchmarks whose tasks count as out-of-domain in the report (the paper treats RTEB as OOD).
OUT_OF_DOMAIN_BENCHMARK_PREFIXES = ("RTEB",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
BACKENDS = ("auto", "jax", "sentence_transformers")
RUN_FILE = "run.json"
log = logging.getLogger("boom_jax.evaluate")


class EvaluationError(ValueError):
    """Bad evaluation input: an unknown task or benchmark, an unusable model path."""


# ----------------------------------------------------------------------------------------------
# Tasks


def _close_matches(name: str, candidates: Sequence[str], n: int = 5) -> str:
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    found += [c for c in candidates if name.lower() in c.lower() and c.lower() not in found][: n - len(found)]
    return ", ".join(lowered.get(f, f) for f in found) or "none"


def _builtin_tasks(names: Sequence[str] | None = None, domain: str | None = None) -> list[EvalTask]:
    return builtin_eval_tasks(names=names, domain=domain) if names is not None else builtin_eval_tasks(domain=domain)


def _mteb_type_name(mteb_type: str) -> str:
    """Our type name for an mteb task type: "Retrieval" -> "retrieval", "InstructionRetrieval" -> "instruction_retrieval"."""
    return TYPE_FROM_MTEB.get(mteb_type) or re.sub(r"(?<!^)(?=[A-Z])", "_", mteb_type).lower()


def _label_task(mteb_task, type_: str, domain: str):
    mteb_task.boom_type = type_
    mteb_task.domain = domain
    return mteb_task


def _mteb_task_by_name(name: str, builtin_names: Sequence[str]):
    import mteb

    try:
        task = mteb.get_task(name)
    except KeyError as e:
        mteb_says = str(e.args[0] if e.args else e).removeprefix("KeyError: ")  # mteb's own close-match hint
        raise EvaluationError(
            f"unknown task {name!r}: not a built-in task (close: {_close_matches(name, builtin_names)}) nor an mteb "
            f"task (mteb: {mteb_says}). Use --tasks=builtin to run every built-in task."
        ) from e
    return _label_task(task, _mteb_type_name(task.metadata.type), "in")


def resolve_tasks(tasks: Any = None, benchmark: str | None = None, caps: TaskCaps | None = None) -> list:
    """mteb task objects, each labelled with `.boom_type` and `.domain` ("in" | "out").

    `tasks`: "builtin" | "builtin_in" | "builtin_out", a comma-separated string or a list of names
    (built-in task names first, then mteb task names), `EvalTask`s or mteb task objects.
    `benchmark`: an mteb benchmark name (e.g. "MTEB(eng, v2)"); its tasks are added.
    `caps`: seeded subsamples of the built-in tasks and `EvalTask`s (see evaluation.subsample); mteb's
    own tasks always run in full.
    """
    caps = caps or TaskCaps()

    def local(task: EvalTask):
        task = subsample_task(task, caps)
        return _label_task(to_mteb_task(task), task.type, task.domain)

    if tasks is None and benchmark is None:
        raise EvaluationError("nothing to evaluate: give tasks (e.g. 'builtin') or a benchmark name")
    items: list = []
    if isinstance(tasks, str):
        items = [t.strip() for t in tasks.split(",") if t.strip()]
    elif tasks is not None:
        items = list(tasks)
    out: list = []
    builtin_names: list[str] | None = None
    for item in items:
        if isinstance(item, EvalTask):
            out.append(local(item))
        elif not isinstance(item, str):
            if not hasattr(item, "metadata"):
                raise EvaluationError(f"not a task: {item!r} (expected a name, an EvalTask or an mteb task)")
            out.append(_label_task(item, getattr(item, "boom_type", None) or _mteb_type_name(item.metadata.type),
                                   getattr(item, "domain", "in")))
        elif item in BUILTIN_SELECTORS:
            out += [local(t) for t in _builtin_tasks(domain=BUILTIN_SELECTORS[item])]
        else:
            if builtin_names is None:
                builtin_names = list(builtin_manifest()["eval"])
            if item in builtin_names:
                (task,) = _builtin_tasks(names=[item])
                out.append(local(task))
            else:
                out.append(_mteb_task_by_name(item, builtin_names))
    if benchmark is not None:
        out += _benchmark_tasks(benchmark)
    names = [t.metadata.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvaluationError(f"tasks given more than once: {dupes}")
    if not out:
        raise EvaluationError(f"no tasks selected by tasks={tasks!r}")
    return out


def _benchmark_tasks(name: str) -> list:
    import mteb

    try:
        bench = mteb.get_benchmark(name)
    except (KeyError, ValueError) as e:
        known = [b.name for b in mteb.get_benchmarks()]
        raise EvaluationError(f"unknown benchmark {name!r}; close matches: {_close_matches(name, known)}") from e
    domain = "out" if bench.name.startswith(OUT_OF_DOMAIN_BENCHMARK_PREFIXES) else "in"
    return [_label_task(t, _mteb_type_name(t.metadata.type), domain) for t in bench.tasks]


# ----------------------------------------------------------------------------------------------
# Models


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES)


def _path_encoder(path: str, max_seq_length: int):
    """The JAX Encoder of a model path (hf.encoders.load_encoder), its errors as EvaluationError."""
    try:
        return load_encoder(path, max_seq_length=max_seq_length)
    except ModelFolderError as e:
        raise EvaluationError(str(e)) from None


def is_sentence_transformers_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a sentence-transformers folder (modules.json present)."""
    return os.path.isfile(os.path.join(path, "modules.json"))


def _sentence_transformers_mteb_model(path: str, label: str, batch_size: int, show_progress_bar: bool,
                                      max_seq_length: int = 0, instruction_template: str | None = None,
                                      meta_overrides: Mapping[str, Any] | None = None):
    # lazy: sentence-transformers (torch) only for the PyTorch backend; mteb_encoder imports mteb (slow)
    from sentence_transformers import SentenceTransformer

    from boom_jax.evaluation.mteb_encoder import INSTRUCTION_ARCHS, MtebEncoder, model_meta

    if not _has_tokenizer(path):
        raise EvaluationError(f"{path}: no tokenizer files found (expected one of {', '.join(TOKENIZER_FILES)})")
    st = SentenceTransformer(path, local_files_only=True)
    if max_seq_length:
        st.max_seq_length = int(max_seq_length)
    model_type = getattr(getattr(getattr(st[0], "auto_model", None), "config", None), "model_type", "")
    instructions = model_type in INSTRUCTION_ARCHS
    dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # renamed in 6.x
    head = SimpleNamespace(embedding_dim=dim(), max_seq_length=st.max_seq_length,
                           similarity=st.similarity_fn_name or "cosine")
    meta = model_meta(label, head, sum(p.numel() for p in st.parameters()), find_provenance(path), instructions,
                      ["Sentence Transformers", "PyTorch"], dict(meta_overrides or {}))
    return MtebEncoder(st, label, batch_size=batch_size, instructions=instructions,
                       prompts={k: v for k, v in (st.prompts or {}).items() if v}, show_progress_bar=show_progress_bar,
                       instruction_template=instruction_template, meta=meta)


def to_mteb_model(model: Any, label: str, batch_size: int = 32, backend: str = "auto", show_progress_bar: bool = False,
                  max_seq_length: int = 0, instruction_template: str | None = None,
                  meta_overrides: Mapping[str, Any] | None = None):
    """An mteb encoder for an `Encoder`, a path, or an object mteb already understands.

    backend "auto": sentence-transformers folders run through sentence-transformers (PyTorch),
    everything else through the JAX encoder; "jax" forces the JAX encoder for every path.
    `max_seq_length` > 0 truncates inputs to that many tokens (for paths and `Encoder`s).
    `instruction_template`: decoder models' query template (None = mteb's Qwen3 one).
    `meta_overrides`: ModelMeta fields (name, revision, license, ...) over what the model and its
    boom.json say (see mteb_encoder.model_meta).
    """
    from boom_jax.evaluation.mteb_encoder import MtebEncoder, model_meta  # lazy: imports mteb (slow)

    if backend not in BACKENDS:
        raise EvaluationError(f"backend={backend!r}; expected one of {BACKENDS}")
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise EvaluationError(f"model path {path} does not exist")
        if backend == "sentence_transformers" or (backend == "auto" and is_sentence_transformers_folder(path)):
            if not is_sentence_transformers_folder(path):
                raise EvaluationError(f"{path}: not a sentence-transformers folder (no modules.json)")
            return _sentence_transformers_mteb_model(path, label, batch_size, show_progress_bar, max_seq_length,
                                                     instruction_template, meta_overrides)
        provenance = find_provenance(path)
        model = _path_encoder(path, max_seq_length)
    else:
        provenance = None
    if hasattr(model, "cfg") and hasattr(model, "encode") and not hasattr(model, "mteb_model_meta"):
        if max_seq_length and model.cfg.max_seq_length != max_seq_length:
            model = Encoder(model.cfg.replace(max_seq_length=int(max_seq_length)), model.params, model.tokenizer)
        wrapped = MtebEncoder(model, label, batch_size=batch_size, show_progress_bar=show_progress_bar,
                              instruction_template=instruction_template)
        if provenance or meta_overrides:
            base = wrapped.mteb_model_meta
            wrapped.mteb_model_meta = model_meta(label, model.cfg, base.n_parameters, provenance,
                                                 wrapped.use_instructions, overrides=dict(meta_overrides or {}))
        return wrapped
    return model


# ----------------------------------------------------------------------------------------------
# Running


def _task_entry(mteb_task, task_result) -> dict:
    return {
        "main_score": float(task_result.get_score()),
        "metric": mteb_task.metadata.main_score,
        "type": getattr(mteb_task, "boom_type", None) or _mteb_type_name(mteb_task.metadata.type),
        "domain": getattr(mteb_task, "domain", "in"),
        "evaluation_time": task_result.evaluation_time,
    }


def _save_items(task, task_result, prediction_folder: str, path: str) -> None:
    """Turns mteb's prediction file of a built-in task into its item record (then drops the file);
    a task mteb read back from its cache made no predictions and keeps the record saved with it."""
    prediction_file = os.path.join(prediction_folder, task.prediction_file_name)
    if not os.path.exists(prediction_file):
        return
    record = task_items(task.eval_task, read_predictions(prediction_file), task_result.scores[SPLIT][0])
    write_text(path, json.dumps(record))
    os.remove(prediction_file)


def _temp_sibling(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.tmp-{uuid.uuid4().hex[:8]}")


def _is_local_task(task) -> bool:
    return getattr(task, "eval_task", None) is not None


def _task_revision(task) -> str | None:
    dataset = getattr(task.metadata, "dataset", None) or {}
    return dataset.get("revision") if isinstance(dataset, Mapping) else None


def _newest_file(path: str, depth: int = 3) -> int:
    """Newest modification time (ns) among the files of a model path: a retrained model differs."""
    if os.path.isfile(path):
        return os.stat(path).st_mtime_ns
    newest = 0
    for root, dirs, files in os.walk(path):
        if root[len(path):].count(os.sep) >= depth:
            dirs[:] = []
        for name in files:
            newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
    return newest


def _fingerprint(models: Mapping[str, Any], tasks: Sequence, caps: TaskCaps | None, max_seq_length: int,
                 instruction_template: str | None) -> dict:
    """What a results folder was computed from; a resumed run must match it."""
    return {
        "tasks": {t.metadata.name: _task_revision(t) for t in tasks},
        "models": {label: [os.path.abspath(os.fspath(m)), _newest_file(os.fspath(m))]
                   if isinstance(m, (str, os.PathLike)) else "in-memory" for label, m in models.items()},
        "caps": dataclasses.asdict(caps or TaskCaps()), "max_seq_length": int(max_seq_length),
        "instruction_template": instruction_template,
    }


def skip_reason(task) -> str | None:
    """Why an mteb registry task cannot run here (closed dataset, data not downloadable), else None.

    Loads the task's data (mteb does so anyway before evaluating it); local tasks always run."""
    if _is_local_task(task):
        return None
    if getattr(task.metadata, "is_public", True) is False:
        return "closed dataset (not public; needs access granted on the hub)"
    try:
        task.load_data()
    except Exception as e:  # whatever the loader raises (offline, gated, removed): the task is listed as skipped
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return f"data could not be loaded: {type(e).__name__}: {first}"
    return None


def _read_run_record(folder: str) -> dict | None:
    path = os.path.join(folder, RUN_FILE)
    if not os.path.exists(path):
        return None
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def evaluate_models(
    models: Mapping[str, Any],
    tasks: Any,
    out_dir: str | os.PathLike | None = None,
    *,
    benchmark: str | None = None,
    batch_size: int = 32,
    backend: str = "auto",
    overwrite: bool = False,
    show_progress_bar: bool = True,
    caps: TaskCaps | None = None,
    max_seq_length: int = 0,
    instruction_template: str | None = None,
    model_meta: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, dict]]:
    """Score every model on every task; returns {label: {task: {main_score, metric, type, domain, ...}}}.

    `models`: label -> `Encoder` or path (see `to_mteb_model`). `tasks`, `caps`: see `resolve_tasks`.
    `max_seq_length` > 0 truncates every model's inputs to that many tokens. `instruction_template`:
    decoder models' query template (None = mteb's Qwen3 one). `model_meta`: label -> ModelMeta fields
    (name, revision, ...; see `mteb_encoder.model_meta`).

    With `out_dir`, results go through mteb's ResultCache in mteb's results-repository layout,
    out_dir/results/<model name>/<revision>/<task>.json + model_meta.json, then results.json,
    table.md, chart.png and run.json (what ran, what was skipped and why). A run that stopped
    (killed, or a task failed) is resumed by running the same call again: finished tasks are read
    back, only the missing ones run. An out_dir computed from other tasks, caps or models is refused
    unless `overwrite`, which recomputes everything in a temporary folder swapped in at the end.
    mteb registry tasks that cannot run here (closed, data not downloadable) are skipped with the
    reason; mteb's own tasks need the network (or a filled datasets cache).
    """
    import mteb

    if not models:
        raise EvaluationError("no models to evaluate")
    mteb_tasks = resolve_tasks(tasks, benchmark, caps)
    fingerprint = _fingerprint(models, mteb_tasks, caps, max_seq_length, instruction_template)
    work = None
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        if overwrite or not os.path.exists(out_dir):
            work = _temp_sibling(out_dir) if overwrite and os.path.exists(out_dir) else out_dir
        else:
            previous = _read_run_record(out_dir)
            if previous is None or previous.get("fingerprint") != fingerprint:
                raise FileExistsError(
                    f"{out_dir} already exists and holds results of another evaluation (other tasks, caps, "
                    "models or template); pass overwrite=True / --overwrite to replace it")
            work = out_dir
        os.makedirs(work, exist_ok=True)
        write_json(os.path.join(work, RUN_FILE), {"fingerprint": fingerprint, "complete": False})
    cache = mteb.ResultCache(work) if work is not None else None
    results: dict[str, dict[str, dict]] = {}
    skipped: dict[str, str] = {}
    meta_paths: dict[str, str] = {}
    try:
        for label, model in tqdm(models.items(), desc="models", disable=not show_progress_bar or len(models) < 2):
            mteb_model = to_mteb_model(model, label, batch_size=batch_size, backend=backend,
                                       max_seq_length=max_seq_length, instruction_template=instruction_template,
                                       meta_overrides=(model_meta or {}).get(label))
            meta = mteb_model.mteb_model_meta
            if cache is not None:
                meta_paths[label] = os.path.relpath(
                    os.path.dirname(cache.get_task_result_path("x", meta.model_name_as_path(), meta.revision)), work)
            results[label] = {}
            for pristine in mteb_tasks:
                name = pristine.metadata.name
                if name in skipped:
                    continue
                # a fresh copy per model: every model sees the same samples (clustering bootstraps,
                # few-shot draws) without touching mteb's random state
                task = copy.deepcopy(pristine)
                reason = skip_reason(task)
                if reason is not None:
                    skipped[name] = reason
                    log.warning("skipping %s: %s", name, reason)
                    continue
                # built-in tasks: mteb's predictions give the per-item scores (evaluation.items)
                predictions = (os.path.join(work, "predictions", label)
                               if work is not None and _is_local_task(task) else None)
                model_result = mteb.evaluate(
                    mteb_model, task, cache=cache, encode_kwargs={"batch_size": batch_size},
                    show_progress_bar=show_progress_bar,
                    overwrite_strategy="only-missing" if cache is not None else "always",
                    prediction_folder=predictions,
                )
                by_name = {r.task_name: r for r in model_result.task_results}
                if name not in by_name:
                    raise RuntimeError(f"mteb returned no result for task {name!r} with model {label!r}")
                result = by_name[name]
                if predictions is not None:
                    _save_items(task, result, predictions, items_path(work, label, name))
                if cache is not None:  # as saved (mteb rounds scores on disk): a resumed run reports the same
                    result = cache.load_task_result(name, meta) or result
                results[label][name] = _task_entry(task, result)
                if hasattr(task, "unload_data"):
                    task.unload_data()
            del mteb_model
        if work is not None:
            if os.path.isdir(os.path.join(work, "predictions")):  # emptied by _save_items
                shutil.rmtree(os.path.join(work, "predictions"))
            write_report(results, work)
            names = [t.metadata.name for t in mteb_tasks]
            write_json(os.path.join(work, RUN_FILE), {
                "fingerprint": fingerprint, "complete": True, "tasks": names,
                "ran": [n for n in names if n not in skipped], "skipped": skipped, "results": meta_paths,
                "summary": run_summary(len(names), skipped)})
            if work != out_dir:
                old = _temp_sibling(out_dir)
                os.replace(out_dir, old)
                os.replace(work, out_dir)
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if work is not None and work != out_dir and os.path.exists(work):
            shutil.rmtree(work, ignore_errors=True)
    if skipped:
        print(run_summary(len(mteb_tasks), skipped))
    return results


def run_summary(num_tasks: int, skipped: Mapping[str, str]) -> str:
    """One line: how many tasks ran, and which were skipped with their reasons."""
    line = f"{num_tasks - len(skipped)} of {num_tasks} tasks ran"
    if skipped:
        line += f"; {len(skipped)} skipped: " + "; ".join(f"{n} ({r})" for n, r in skipped.items())
    return line


def dev_caps(eval_config: Any) -> TaskCaps:
    """The task caps of a config's `eval` section (max_queries, max_documents, max_texts)."""
    return TaskCaps(int(eval_config.max_queries), int(eval_config.max_documents), int(eval_config.max_texts))


def evaluate_dev(config: Any, models: Mapping[str, Any], out_dir: str | os.PathLike | None,
                 tasks: Any = "builtin") -> dict[str, dict[str, dict]]:
    """`evaluate_models` with a training config's dev settings: config.eval.{batch_size, max_queries,
    max_documents, max_texts, max_seq_length}, config.log.progress_bar and the training's query template
    (config.model.query_prompt_template, when set, for decoder models); replaces out_dir."""
    return evaluate_models(models, tasks, out_dir, batch_size=int(config.eval.batch_size), overwrite=True,
                           show_progress_bar=bool(config.log.progress_bar), caps=dev_caps(config.eval),
                           max_seq_length=int(config.eval.max_seq_length),
                           instruction_template=config.model.query_prompt_template or None)


def evaluate_builtin_retrieval(
    encoder: Any,
    tasks: Sequence[EvalTask] | None = None,
    batch_size: int = 32,
    k: int = 10,
    instruction_template: str | None = None,
) -> dict[str, float]:
    """Fast dev evaluation: {task: nDCG@k} for the retrieval tasks among `tasks` (others are skipped).

    Uses the NumPy metrics directly (no mteb run) but the same prompts and scores mteb would give.
    `tasks` defaults to every built-in retrieval task.
    """
    from mteb.types import PromptType  # lazy: mteb is a slow import, only for evaluation

    from boom_jax.evaluation.mteb_encoder import MtebEncoder

    if tasks is None:
        tasks = _builtin_tasks()
    retrieval = [t for t in tasks if t.type == "retrieval"]
    if not retrieval:
        raise EvaluationError(f"no retrieval task among {[t.name for t in tasks]}")
    prompts = MtebEncoder(encoder, instruction_template=instruction_template)
    similarity = getattr(getattr(encoder, "cfg", None), "similarity", "cosine")  # as the mteb path scores it
    out: dict[str, float] = {}
    for task in retrieval:
        meta = task_metadata(task)
        qids, dids = list(task.queries), list(task.corpus)
        q = encoder.encode([task.queries[i] for i in qids], prompt=prompts.prompt_for(meta, PromptType.query), batch_size=batch_size)
        d = encoder.encode([task.corpus[i] for i in dids], prompt=prompts.prompt_for(meta, PromptType.document), batch_size=batch_size)
        scores = metrics.retrieval_scores(q, d, qids, dids, task.qrels, k_values=(k,), similarity=similarity)
        out[task.name] = scores[f"ndcg_at_{k}"]
    return out


__all__ = [
    "EvaluationError",
    "evaluate_models",
    "evaluate_dev",
    "evaluate_builtin_retrieval",
    "resolve_tasks",
    "to_mteb_model",
    "load_encoder",
    "SPLIT",
]

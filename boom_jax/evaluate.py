"""Evaluate embedding models on mteb benchmarks or the built-in offline tasks.

Usage:
  python -m boom_jax.evaluate --model=PATH [--model=PATH2 ...] [--name=LABEL ...]
      (--benchmark="MTEB(eng, v2)" | --tasks=NAME,NAME | --tasks=builtin | --tasks=builtin_in | --tasks=builtin_out)
      --out=DIR [--batch_size=32] [--backend=auto|jax|sentence_transformers] [--overwrite]
      [--model_name=org/name ...] [--revision=REV ...] [--instruction_template=...]

PATH is a model folder, a train workdir, a Hugging Face folder (run by the JAX encoder, no export
needed) or an exported sentence-transformers folder (run by sentence-transformers unless
--backend=jax). Benchmarks and mteb task names need the network (mteb downloads their data);
the built-in tasks run offline; tasks that cannot run are listed as skipped with the reason. DIR
receives results/<model name>/<revision>/<task>.json + model_meta.json (mteb's results-repository
layout), results.json, table.md, chart.png and run.json. Re-running a stopped evaluation resumes it.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from boom_jax import cli
from boom_jax.evaluation.report import TABLE_FILE
from boom_jax.evaluation.subsample import TaskCaps
from boom_jax.hf.encoders import load_encoder
from boom_jax.models.truncation import TruncatedEncoder
from boom_jax.preflight import check_out_not_inside, check_writable_folder

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Declares this command's flags (on `flag_values`, so tests can parse into a fresh FlagValues)."""
    flags.DEFINE_multi_string("model", [], "Model to evaluate (repeat for several): model folder, train workdir, "
                              "HF or sentence-transformers folder.", flag_values=flag_values)
    flags.DEFINE_multi_string("name", [], "Label of each --model in the report, in order (default: the folder "
                              "name).", flag_values=flag_values)
    flags.DEFINE_string("benchmark", None, 'mteb benchmark name, e.g. "MTEB(eng, v2)" (needs the network).',
                        flag_values=flag_values)
    flags.DEFINE_list("tasks", None, "Comma-separated task names (built-in or mteb), or builtin / builtin_in / "
                      "builtin_out.", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder for the results, table and chart.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", flag_values=flag_values)
    flags.DEFINE_enum("backend", "auto", ["auto", "jax", "sentence_transformers"],
                      "auto: sentence-transformers folders through sentence-transformers, everything else through "
                      "JAX.", flag_values=flag_values)
    flags.DEFINE_integer("max_queries", 0, "Built-in retrieval tasks: score a seeded sample of this many queries "
                         "(0 = all).", flag_values=flag_values)
    flags.DEFINE_integer("max_documents", 0, "Built-in retrieval tasks: corpus capped to this many documents, the "
                         "kept queries' relevant ones always included (0 = all).", flag_values=flag_values)
    flags.DEFINE_integer("max_texts", 0, "Built-in classification / clustering / pair tasks: this many items per "
                         "split, stratified by label (0 = all).", flag_values=flag_values)
    flags.DEFINE_integer("truncate_dim", 0, "Score each model's first N embedding coordinates, re-normalized (a "
                         "Matryoshka width; runs every model through the JAX encoder; 0 = all).", flag_values=flag_values)
    flags.DEFINE_integer("max_seq_length", 0, "Truncate every input to this many tokens (0 = the model's own "
                         "maximum).", flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder (without it, re-running the same "
                      "evaluation resumes it: finished tasks are read back).", flag_values=flag_values)
    flags.DEFINE_multi_string("model_name", [], "mteb model name of each --model, in order (e.g. org/name as on the "
                              "hub; default boom_jax/<label>): names the results folder.", flag_values=flag_values)
    flags.DEFINE_multi_string("revision", [], "Revision of each --model, in order (e.g. the hub commit; default "
                              "'local'): the results folder under the model name.", flag_values=flag_values)
    flags.DEFINE_string("instruction_template", None, "Decoder models' query template holding {instruction} "
                        "(default: mteb's Qwen3-Embedding one, 'Instruct: {instruction}\\nQuery:').",
                        flag_values=flag_values)


def model_labels(paths: list[str], names: list[str]) -> dict[str, str]:
    """label -> path: the given --name values, else folder names made unique with a numeric suffix."""
    if names and len(names) != len(paths):
        raise app.UsageError(f"--name given {len(names)} time(s) for {len(paths)} --model(s); give one per model or none")
    labels = list(names) or [os.path.basename(os.path.normpath(p)) or "model" for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 and labels.count(label) == 1 else f"{label}-{seen[label]}")
    if names and len(set(names)) != len(names):
        raise app.UsageError(f"--name values must be unique, got {names}")
    return dict(zip(unique, paths))


def model_meta_flags(labels: list[str], names: list[str], revisions: list[str]) -> dict[str, dict]:
    """label -> {name, revision} from --model_name / --revision (one per --model, or none)."""
    for flag, values in (("--model_name", names), ("--revision", revisions)):
        if values and len(values) != len(labels):
            raise app.UsageError(f"{flag} given {len(values)} time(s) for {len(labels)} --model(s); give one per "
                                 "model or none")
    return {label: {"name": names[i] if names else None, "revision": revisions[i] if revisions else None}
            for i, label in enumerate(labels)}


def is_resumable(out: str) -> bool:
    """Whether --out holds an evaluation's run record (re-running it resumes; the runner checks it matches)."""
    from boom_jax.evaluation.runner import RUN_FILE  # lazy: evaluation.runner imports mteb (a slow import)

    return os.path.isfile(os.path.join(out, RUN_FILE))


def truncated_models(models: dict[str, str], dim: int, max_seq_length: int = 0) -> dict:
    """label -> the path's JAX encoder returning its first ``dim`` coordinates, re-normalized."""
    if dim < 0:
        raise app.UsageError(f"--truncate_dim={dim} must be >= 0")
    return {label: TruncatedEncoder(load_encoder(path, max_seq_length), dim) for label, path in models.items()}


def main(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """Runs the evaluation the parsed flags describe; prints the table (stdout). Bad input raises (one line
    and exit code 2 through boom_jax.cli)."""
    cli.check_arguments(argv, flag_values)
    if not flag_values.model:
        raise app.UsageError("give at least one --model")
    if not flag_values.out:
        raise app.UsageError("--out is required")
    if not flag_values.tasks and not flag_values.benchmark:
        raise app.UsageError("give --tasks (e.g. --tasks=builtin) or --benchmark")
    if flag_values.batch_size < 1:
        raise app.UsageError(f"--batch_size={flag_values.batch_size} must be positive")
    for path in flag_values.model:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--model={path}: model path {path} does not exist")
    models = model_labels(flag_values.model, flag_values.name)
    meta = model_meta_flags(list(models), flag_values.model_name, flag_values.revision)
    check_out_not_inside(flag_values.out, [("--model", p) for p in flag_values.model])
    if os.path.exists(flag_values.out) and not flag_values.overwrite and not is_resumable(flag_values.out):
        raise FileExistsError(f"--out={flag_values.out}: already exists (pass --overwrite to replace it)")
    check_writable_folder(flag_values.out, "--out")
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep mteb's per-step INFO lines out of the progress bars

    from boom_jax.evaluation.runner import evaluate_models  # lazy: mteb, only once the flags are checked

    if flag_values.truncate_dim:
        models = truncated_models(models, flag_values.truncate_dim, flag_values.max_seq_length)
    evaluate_models(
        models,
        flag_values.tasks,
        flag_values.out,
        benchmark=flag_values.benchmark,
        batch_size=flag_values.batch_size,
        backend=flag_values.backend,
        overwrite=flag_values.overwrite,
        caps=TaskCaps(flag_values.max_queries, flag_values.max_documents, flag_values.max_texts),
        max_seq_length=flag_values.max_seq_length,
        instruction_template=flag_values.instruction_template,
        model_meta=meta,
    )
    with open(os.path.join(flag_values.out, TABLE_FILE), encoding="utf-8") as f:
        print(f.read())
    print(f"results written to {flag_values.out}", file=sys.stderr)


def run() -> None:
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()

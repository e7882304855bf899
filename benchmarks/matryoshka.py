"""Matryoshka training vs the same run without it: retrieval at truncated widths on a built-in dev task.

  python benchmarks/matryoshka.py [--steps=20] [--dims=384,128,32] [--task=debian_desc_retrieval]

Trains all-MiniLM-L6-v2 twice in this process with the real loop (same data, seed and steps): plain
InfoNCE, and InfoNCE summed over the Matryoshka widths (config loss.matryoshka_dims). Then scores the
base model and both runs at every width (first N coordinates, re-normalized) by nDCG@10 on a seeded
sample of the task, and prints them side by side with the differences.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Train steps of each run.")
flags.DEFINE_string("dims", "384,128,32", "Matryoshka widths (trained and scored).")
flags.DEFINE_string("task", "debian_desc_retrieval", "Built-in retrieval task to score.")
flags.DEFINE_string("train_set", "debian_desc", "Built-in training set.")
flags.DEFINE_integer("batch_size", 16, "Queries per step.")
flags.DEFINE_integer("max_queries", 100, "Dev queries scored.")
flags.DEFINE_integer("max_documents", 400, "Dev corpus size.")


def train_run(workdir: str, matryoshka: str):
    from boom_jax.training.loop import train
    from configs.minilm_bls import get_config

    c = get_config("smoke")
    with c.unlocked():
        c.data.names, c.data.limit, c.data.fixed_length = FLAGS.train_set, FLAGS.steps * FLAGS.batch_size, True
        c.data.train_group_size, c.data.query_max_len, c.data.passage_max_len = 2, 32, 64
        c.train.batch_size, c.train.max_steps, c.train.learning_rate = FLAGS.batch_size, FLAGS.steps, 1e-4
        c.train.log_every = c.checkpoint.every_steps = FLAGS.steps
        c.checkpoint.async_save = False
        c.eval.every_steps, c.eval.at_end = 0, False
        c.export.sentence_transformers = c.log.tensorboard = c.log.progress_bar = False
        c.loss.matryoshka_dims = matryoshka
    return train(c, workdir)


def scores_by_width(encoder, task, dims):
    from boom_jax.evaluation.runner import evaluate_builtin_retrieval
    from boom_jax.models.truncation import TruncatedEncoder

    return {d: evaluate_builtin_retrieval(TruncatedEncoder(encoder, d), [task])[task.name] for d in dims}


def main(argv):
    del argv
    from boom_jax.data.builtin import builtin_eval_tasks
    from boom_jax.encode import load_encoder
    from boom_jax.evaluation.subsample import TaskCaps, subsample_task
    from boom_jax.models.encoder import Encoder
    from boom_jax.tokenization import load_tokenizer
    from boom_jax.training.loop import resolve_model_path

    dims = [int(d) for d in FLAGS.dims.split(",")]
    (task,) = builtin_eval_tasks([FLAGS.task])
    task = subsample_task(task, TaskCaps(FLAGS.max_queries, FLAGS.max_documents, 0))
    base = load_encoder(resolve_model_path("builtin:minilm"), max_seq_length=64)
    rows = {"base": scores_by_width(base, task, dims)}
    for label, matryoshka in (("infonce", ""), ("matryoshka", FLAGS.dims)):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            result = train_run(workdir, matryoshka)
            cfg = result.model_config.replace(max_seq_length=64)
            encoder = Encoder(cfg, result.params, load_tokenizer(result.tokenizer_dir))
            rows[label] = scores_by_width(encoder, task, dims)
        print(f"{label}: {FLAGS.steps} steps trained in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nnDCG@10 on {FLAGS.task} ({FLAGS.max_queries} queries, {FLAGS.max_documents} documents), "
          f"{FLAGS.steps} steps x {FLAGS.batch_size} queries on {FLAGS.train_set}")
    print("| width | base | InfoNCE | InfoNCE + Matryoshka | Matryoshka - InfoNCE |")
    print("|---|---|---|---|---|")
    for d in dims:
        b, p, m = rows["base"][d], rows["infonce"][d], rows["matryoshka"][d]
        print(f"| {d} | {b:.4f} | {p:.4f} | {m:.4f} | {m - p:+.4f} |")


if __name__ == "__main__":
    app.run(main)

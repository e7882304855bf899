"""Evaluation: NumPy metrics, built-in tasks as mteb tasks, the JAX encoder as an mteb encoder, reports.

`evaluate_models` / `evaluate_builtin_retrieval` live in `runner` and are loaded on first use, so
importing this package does not import mteb (slow) until an evaluation actually runs.
"""

from boom_jax.evaluation import metrics
from boom_jax.evaluation.report import load_results, results_table, summarize, write_report

_RUNNER_NAMES = ("EvaluationError", "evaluate_models", "evaluate_builtin_retrieval", "resolve_tasks", "load_encoder")


def __getattr__(name: str):
    if name in _RUNNER_NAMES:
        from boom_jax.evaluation import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'boom_jax.evaluation' has no attribute {name!r}")


__all__ = ["metrics", "load_results", "results_table", "summarize", "write_report", *_RUNNER_NAMES]

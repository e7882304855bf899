"""Dev evaluation during training: nDCG@10 of the current params on built-in retrieval tasks."""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from boom_jax.data.builtin import builtin_eval_tasks
from boom_jax.data.records import EvalTask
from boom_jax.errors import ConfigError
from boom_jax.evaluation.runner import dev_caps, evaluate_builtin_retrieval
from boom_jax.evaluation.subsample import subsample_tasks
from boom_jax.models.encoder import Encoder


class DevEvaluator:
    """nDCG@10 of the current params on built-in retrieval tasks (NumPy metrics, no mteb run), on the
    seeded samples that config.eval's caps (max_queries, max_documents) and max_seq_length ask for."""

    def __init__(self, config: ml_collections.ConfigDict, cfg, tokenizer, tasks: Sequence[EvalTask] | None = None):
        if tasks is None:
            names = [n.strip() for n in config.eval.tasks.split(",") if n.strip()] or None
            tasks = builtin_eval_tasks(names=names) if names else builtin_eval_tasks(domain="in")
        self.tasks = subsample_tasks([t for t in tasks if t.type == "retrieval"], dev_caps(config.eval))
        if not self.tasks:
            raise ConfigError(f"config.eval.tasks={config.eval.tasks!r} selects no retrieval task")
        self.batch_size = config.eval.batch_size
        self.instruction_template = config.model.query_prompt_template or None  # decoders: as trained
        if config.eval.max_seq_length:
            cfg = cfg.replace(max_seq_length=int(config.eval.max_seq_length))
        self._encoder = Encoder(cfg, {}, tokenizer)

    def __call__(self, params: Any) -> dict[str, float]:
        self._encoder.params = params
        return evaluate_builtin_retrieval(self._encoder, self.tasks, batch_size=self.batch_size,
                                          instruction_template=self.instruction_template)

"""The JAX `Encoder` as an mteb encoder: mteb runs any of its tasks on it with no export step.

Prompts follow the paper's evaluation. Decoder models (instruction-tuned, last-token pooling) get
"Instruct: {task instruction}\nQuery: " on queries and on the texts of symmetric tasks
(classification, clustering, pair classification, STS), never on retrieval documents; the task
instruction is the mteb task's prompt (for the built-in tasks, `EvalTask.instruction` or its
description). Other models use the prompts from their own config, chosen exactly as mteb chooses a
sentence-transformers model's prompts (task name, task type, then "query" / "document"), so the
wrapper and an exported sentence-transformers folder score alike.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata

    from boom_jax.models.encoder import Encoder

INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "
INSTRUCTION_ARCHS = ("qwen3",)


def uses_instructions(cfg) -> bool:
    """Whether the paper's query instruction applies to a model config: decoder embedding models."""
    return getattr(cfg, "arch", None) in INSTRUCTION_ARCHS


def mteb_model_name(label: str) -> str:
    """An mteb model name ("org/name" form) for a local model label."""
    return "boom_jax/" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model")


class MtebEncoder(AbsEncoder):
    """Adapts `Encoder.encode` to mteb's encoder protocol (cosine similarity, float32 numpy output)."""

    def __init__(
        self,
        encoder: "Encoder",
        label: str = "model",
        batch_size: int = 32,
        instructions: bool | None = None,
        prompts: dict[str, str] | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """Wrap `encoder` (anything with `encode(texts, prompt=, batch_size=, show_progress_bar=)`).

        `instructions` and `prompts` default to what `encoder.cfg` says (see `uses_instructions`,
        `ModelConfig.prompts`); pass them for encoders without a `cfg` (e.g. a SentenceTransformer).
        """
        cfg = getattr(encoder, "cfg", None)
        self.model = encoder
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        if instructions is None:
            instructions = uses_instructions(cfg)
        self.use_instructions = instructions
        self.instruction_template = INSTRUCTION_TEMPLATE if instructions else None
        if prompts is None:
            prompts = dict(getattr(cfg, "prompts", None) or {})
        self.model_prompts = (
            AbsEncoder.validate_task_to_prompt_name(dict(prompts), raise_for_invalid_keys=False)[0] if prompts else None
        )
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites=dict(
                name=mteb_model_name(label),
                revision="local",
                similarity_fn_name=ScoringFunction.COSINE,
                embed_dim=getattr(cfg, "embedding_dim", None),
                max_tokens=getattr(cfg, "max_seq_length", None),
                use_instructions=instructions,
                framework=["JAX"] if cfg is not None else ["Sentence Transformers", "PyTorch"],
                open_weights=True,
            )
        )

    def prompt_for(self, task_metadata: "TaskMetadata", prompt_type: PromptType | None) -> str | None:
        """The text put before each input of this task and side (query / document / symmetric)."""
        if not self.use_instructions:
            return get_prompt(self.model_prompts, task_metadata, prompt_type)
        if prompt_type == PromptType.document:
            return None
        instruction = self.get_instruction(task_metadata, prompt_type)
        if isinstance(instruction, dict):  # per-side prompts on a symmetric task: use the query one
            instruction = instruction.get(PromptType.query.value, "")
        return INSTRUCTION_TEMPLATE.format(instruction=instruction) if instruction else None

    def encode(
        self,
        inputs,
        *,
        task_metadata: "TaskMetadata",
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embeds every text of mteb's data loader, in order."""
        texts = [text for batch in inputs for text in batch["text"]]
        return self.model.encode(
            texts,
            prompt=self.prompt_for(task_metadata, prompt_type),
            batch_size=int(kwargs.get("batch_size") or self.batch_size),
            show_progress_bar=self.show_progress_bar,
        )

"""The JAX `Encoder` as an mteb encoder: mteb runs any of its tasks on it with no export step.

Prompts follow the paper's evaluation. Decoder models (instruction-tuned, last-token pooling) get
the instruction template on queries and on the texts of symmetric tasks (classification, clustering,
pair classification, STS), never on retrieval documents; the task instruction is the mteb task's
prompt (for the built-in tasks, `EvalTask.instruction` or its description). The default template is
the one mteb's own loader uses for the Qwen3-Embedding family, "Instruct: {instruction}\nQuery:"
(`MTEB_INSTRUCTION_TEMPLATE`, pinned by a test against mteb's model file); pass `instruction_template`
to evaluate a model trained with another (the dev evaluations pass config.model.query_prompt_template).
Other models use the prompts from their own config, chosen exactly as mteb chooses a
sentence-transformers model's prompts (task name, task type, then "query" / "document"), so the
wrapper and an exported sentence-transformers folder score alike.

`model_meta(...)` fills mteb's ModelMeta from the model and the run (name, revision, parameters,
memory, embedding size, max tokens, similarity, languages, license, base model, training datasets);
mteb writes it as model_meta.json beside the task results, as the results repository expects.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from boom_jax.models.registry import arch_names

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata

    from boom_jax.models.encoder import Encoder

# mteb 2.26 models/model_implementations/qwen3_models.py: instruction_template(...) returns this.
MTEB_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery:"
# Derived from the architecture specs (ArchSpec.uses_instructions); kept for callers that test a name.
INSTRUCTION_ARCHS = arch_names(uses_instructions=True)
# ISO 639-1 codes of model cards -> mteb's ISO 639-3 + script form.
LANGUAGES = {"en": "eng-Latn", "de": "deu-Latn", "fr": "fra-Latn", "es": "spa-Latn", "zh": "zho-Hans",
             "ja": "jpn-Jpan", "it": "ita-Latn", "pt": "por-Latn", "nl": "nld-Latn", "ru": "rus-Cyrl"}


def uses_instructions(cfg) -> bool:
    """Whether the paper's query instruction applies to a model config: decoder embedding models."""
    return getattr(cfg, "arch", None) in INSTRUCTION_ARCHS  # ArchSpec.uses_instructions


def mteb_model_name(label: str) -> str:
    """An mteb model name ("org/name" form) for a local model label."""
    return "boom_jax/" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model")


def _languages(codes: Any) -> list[str] | None:
    codes = [codes] if isinstance(codes, str) else list(codes or [])
    out = [LANGUAGES.get(c, c) for c in codes if c]
    return out or None


def model_meta(label: str, cfg: Any = None, n_parameters: int | None = None, provenance: dict | None = None,
               instructions: bool = False, framework: list[str] | None = None,
               overrides: dict[str, Any] | None = None) -> ModelMeta:
    """mteb's ModelMeta for a local model: `overrides` (e.g. name and revision from the command line) win
    over what `cfg` (ModelConfig) and `provenance` (boom.json) say."""
    provenance = provenance or {}
    training = provenance.get("training") or {}
    similarity = getattr(cfg, "similarity", "cosine")
    license_ = provenance.get("license")
    fields = dict(
        name=mteb_model_name(label), revision="local",
        similarity_fn_name=ScoringFunction.DOT_PRODUCT if similarity == "dot" else ScoringFunction.COSINE,
        embed_dim=getattr(cfg, "embedding_dim", None), max_tokens=getattr(cfg, "max_seq_length", None),
        n_parameters=n_parameters, memory_usage_mb=round(n_parameters * 4 / 2**20, 2) if n_parameters else None,
        use_instructions=instructions, framework=framework or ["JAX"], open_weights=True,
        languages=_languages(provenance.get("language")), license=license_ or None,
        adapted_from=provenance.get("base_model") or None,
        training_datasets={d["name"] for d in training.get("datasets", [])} or None,
    )
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return ModelMeta.create_empty(overwrites=fields)


class MtebEncoder(AbsEncoder):
    """Adapts `Encoder.encode` to mteb's encoder protocol (the model's similarity, float32 numpy output)."""

    def __init__(
        self,
        encoder: "Encoder",
        label: str = "model",
        batch_size: int = 32,
        instructions: bool | None = None,
        prompts: dict[str, str] | None = None,
        show_progress_bar: bool = False,
        instruction_template: str | None = None,
        meta: ModelMeta | None = None,
    ) -> None:
        """Wrap `encoder` (anything with `encode(texts, prompt=, batch_size=, show_progress_bar=)`).

        `instructions` and `prompts` default to what `encoder.cfg` says (see `uses_instructions`,
        `ModelConfig.prompts`); pass them for encoders without a `cfg` (e.g. a SentenceTransformer).
        `instruction_template` (must hold "{instruction}"; None = `MTEB_INSTRUCTION_TEMPLATE`) applies when
        `instructions`. `meta`: the ModelMeta to report (default: `model_meta(label, cfg, ...)`).
        """
        cfg = getattr(encoder, "cfg", None)
        self.model = encoder
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        if instructions is None:
            instructions = uses_instructions(cfg)
        self.use_instructions = instructions
        template = instruction_template or MTEB_INSTRUCTION_TEMPLATE
        if "{instruction}" not in template:
            raise ValueError(f"instruction_template={template!r} must contain '{{instruction}}'")
        self.instruction_template = template if instructions else None
        if prompts is None:
            prompts = dict(getattr(cfg, "prompts", None) or {})
        self.model_prompts = (
            AbsEncoder.validate_task_to_prompt_name(dict(prompts), raise_for_invalid_keys=False)[0] if prompts else None
        )
        if meta is None:
            params = getattr(encoder, "params", None)
            n_params = None
            if params is not None:
                n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
            meta = model_meta(label, cfg, n_params, instructions=instructions,
                              framework=["JAX"] if cfg is not None else ["Sentence Transformers", "PyTorch"])
        self.mteb_model_meta = meta

    def prompt_for(self, task_metadata: "TaskMetadata", prompt_type: PromptType | None) -> str | None:
        """The text put before each input of this task and side (query / document / symmetric)."""
        if not self.use_instructions:
            return get_prompt(self.model_prompts, task_metadata, prompt_type)
        if prompt_type == PromptType.document:
            return None
        instruction = self.get_instruction(task_metadata, prompt_type)
        if isinstance(instruction, dict):  # per-side prompts on a symmetric task: use the query one
            instruction = instruction.get(PromptType.query.value, "")
        return self.instruction_template.format(instruction=instruction) if instruction else None

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

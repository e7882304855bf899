"""The model card (README.md) and the provenance file (boom.json) of an exported model.

The card starts with the YAML metadata the Hugging Face hub reads, in the form sentence-transformers
writes it (library_name, pipeline_tag, tags, base_model, datasets, language, license, model-index with
the evaluation results that exist), built with huggingface_hub's own `ModelCardData`. The body says
what the model is, how to load it (sentence-transformers and transformers snippets that run on the
folder), the training recipe, and for a merged model the bag: its members with their ratios, seeds,
subset manifest hashes and dev scores beside the merged one, and a mergekit-style YAML block for the
merge. boom.json holds the same facts, machine-readable.

The provenance is a plain dict (see docs/DESIGN.md, "Provenance"); the layers that know the facts
(training, the BOOM workflows) fill it, this module only renders it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from boom_jax.atomic_io import write_json, write_text
from boom_jax.models.config import ModelConfig

PROVENANCE_FILE = "boom.json"
CARD_FILE = "README.md"
PROVENANCE_FORMAT = 1
# The model id the snippets load when the provenance names no hub repository.
PLACEHOLDER_MODEL_ID = "path/to/this/folder"
SNIPPET_TEXTS = ["A man is eating food.", "A man is eating a piece of bread."]
# Our task types as mteb names them in a model-index.
MTEB_TASK_TYPES = {"retrieval": "Retrieval", "classification": "Classification", "clustering": "Clustering",
                   "pair_classification": "PairClassification"}
# Our merge method names -> (mergekit's name, our parameter -> mergekit's parameter).
MERGEKIT_METHODS = {
    "linear": ("linear", {}), "slerp": ("slerp", {"t": "t"}), "multislerp": ("multislerp", {}),
    "karcher": ("karcher", {"max_iter": "max_iter", "tol": "tol"}),
    "task_arithmetic": ("task_arithmetic", {"lambda_": "lambda"}),
    "ties": ("ties", {"density": "density", "lambda_": "lambda"}),
    "dare_linear": ("dare_linear", {"density": "density", "lambda_": "lambda"}),
    "dare_ties": ("dare_ties", {"density": "density", "lambda_": "lambda"}),
    "model_stock": ("model_stock", {}),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(name: Any) -> bool:
    """Whether `name` reads as a hub repository id ("owner/name"), not a local path."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not os.path.exists(name)


def read_card_metadata(folder: str | os.PathLike | None) -> dict[str, Any]:
    """The YAML metadata of `folder`/README.md ({} when there is none); read offline."""
    if not folder:
        return {}
    path = os.path.join(os.fspath(folder), CARD_FILE)
    if not os.path.isfile(path):
        return {}
    from huggingface_hub import metadata_load

    try:
        return metadata_load(path) or {}
    except Exception:  # a base model's malformed card must not stop an export; its facts are optional
        return {}


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """boom.json of `folder`, or None."""
    path = os.path.join(os.fspath(folder), PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _as_list(value: Any) -> list:
    if value in (None, "", []):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _mean(scores: Mapping[str, float] | None) -> float | None:
    values = [float(v) for v in (scores or {}).values() if v is not None]
    return sum(values) / len(values) if values else None


def eval_results(provenance: Mapping[str, Any]):
    """huggingface_hub EvalResults for the evaluation scores the provenance holds (dev tasks)."""
    from huggingface_hub import EvalResult

    evaluation = provenance.get("evaluation") or {}
    types = evaluation.get("task_types") or {}
    metrics = evaluation.get("metrics") or {}
    out = []
    for task, score in sorted((evaluation.get("dev") or {}).items()):
        if score is None:
            continue
        type_ = types.get(task, "retrieval")
        out.append(EvalResult(
            task_type=MTEB_TASK_TYPES.get(type_, type_), dataset_type=f"boom_jax/builtin/{task}",
            dataset_name=f"boom_jax dev: {task}", dataset_split="test", metric_type=metrics.get(task, "ndcg_at_10"),
            metric_value=round(float(score), 6),
        ))
    return out


def card_data(cfg: ModelConfig, provenance: Mapping[str, Any]):
    """The card's YAML metadata as huggingface_hub's ModelCardData (validated on construction)."""
    from huggingface_hub import ModelCardData

    training = provenance.get("training") or {}
    kind = provenance.get("kind", "model")
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense", "boom_jax"]
    examples = sum(int(d.get("examples", 0)) for d in training.get("datasets", []))
    if examples:
        tags.append(f"dataset_size:{examples}")
    if kind in ("merged", "incremental", "cluster"):
        tags += ["merge", "boom"]
    results = eval_results(provenance)
    base = provenance.get("base_model")
    return ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=tags,
        base_model=base if is_hub_id(base) else None,
        datasets=[d for d in (x.get("hub_id") for x in training.get("datasets", [])) if is_hub_id(d)] or None,
        language=_as_list(provenance.get("language")) or None,
        license=provenance.get("license") or None,
        model_name=provenance.get("name") or "boom_jax model" if results else None,
        eval_results=results or None,
    )


def _py(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def st_snippet(cfg: ModelConfig, model_id: str) -> str:
    """Python that loads the folder with sentence-transformers and embeds `texts` (`embeddings`)."""
    lines = ["from sentence_transformers import SentenceTransformer", "",
             f"model = SentenceTransformer({_py(model_id)})",
             f"texts = {_py(SNIPPET_TEXTS)}",
             "embeddings = model.encode(texts)",
             f"print(embeddings.shape)  # (2, {cfg.embedding_dim})",
             f"print(model.similarity(embeddings, embeddings))  # {cfg.similarity} similarity"]
    if (cfg.prompts or {}).get("query"):
        lines += ["# queries take the model's query prompt; documents are encoded as they are",
                  "query_embeddings = model.encode([\"What is the man eating?\"], prompt_name=\"query\")"]
    return "\n".join(lines)


def transformers_snippet(cfg: ModelConfig, model_id: str) -> str:
    """Python that reproduces the folder's sentence-transformers embeddings with transformers alone
    (the same tokenization, pooling and normalization)."""
    lines = ["import torch", "from transformers import AutoModel, AutoTokenizer", "",
             f"tokenizer = AutoTokenizer.from_pretrained({_py(model_id)})",
             f"model = AutoModel.from_pretrained({_py(model_id)})",
             f"texts = {_py(SNIPPET_TEXTS)}"]
    lines += [f"batch = tokenizer(texts, padding=True, truncation=True, max_length={cfg.max_seq_length}, "
              "return_tensors=\"pt\")",
              "with torch.no_grad():",
              "    hidden = model(**batch).last_hidden_state",
              "mask = batch[\"attention_mask\"]"]
    if cfg.pooling == "mean":
        lines += ["weights = mask.unsqueeze(-1).to(hidden.dtype)",
                  "embeddings = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # mean pooling"]
    elif cfg.pooling == "cls":
        lines.append("embeddings = hidden[:, 0]  # CLS pooling")
    else:
        lines += ["last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # last real token (left or right padding)",
                  "embeddings = hidden[torch.arange(hidden.shape[0]), last]  # last-token pooling"]
    if cfg.normalize:
        lines.append("embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)")
    return "\n".join(lines)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x else f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return str(x)


def _training_section(training: Mapping[str, Any]) -> list[str]:
    if not training:
        return []
    hw = training.get("hardware") or {}
    rows = [("Schedule", training.get("schedule")), ("Global batch (queries)", training.get("batch_size")),
            ("Group size (1 positive + hard negatives)", training.get("group_size")),
            ("Max lengths (query / passage)", f"{training.get('query_max_len')} / {training.get('passage_max_len')}"),
            ("Learning rate", f"{_fmt(training.get('learning_rate'))} ({training.get('lr_schedule')}, warmup "
                              f"{_fmt(training.get('warmup_ratio'))})"),
            ("Temperature", _fmt(training.get("temperature"))), ("Steps", training.get("steps")),
            ("Examples seen", training.get("examples")), ("Epochs", training.get("epochs")),
            ("Seed", training.get("seed")), ("Wall time (s)", _fmt(training.get("wall_time_s"), 1)),
            ("Hardware", f"{hw.get('device_count', '?')} x {hw.get('device_kind', '?')} ({hw.get('platform', '?')})")]
    if training.get("random_init_from"):
        rows.append(("Initialization", f"random (architecture and tokenizer of `{training['random_init_from']}`)"))
    if training.get("query_prompt_template"):
        rows.append(("Query prompt template", f"`{training['query_prompt_template']!r}`"))
    subset = training.get("subset")
    if subset:
        rows.append(("Subset", f"ratio {_fmt(subset.get('ratio'))}, seed {subset.get('seed')}, manifest sha256 "
                               f"`{subset.get('manifest_sha256')}`"))
    loss = training.get("loss") or {}
    terms = [f"{name} x {_fmt(loss[key])}" for name, key in (("InfoNCE", "info_nce_weight"), (
        "distillation (kl_div)", "kd_weight"), ("MarginMSE", "margin_mse_weight")) if loss.get(key)]
    if len(terms) > 1 or loss.get("info_nce_weight", 1.0) != 1.0:
        rows.append(("Loss", " + ".join(terms)))
    extras = [name for name, key in (("fake-negative mask", "fake_negative_mask"), ("query-query negatives",
              "query_query"), ("passage-passage negatives", "passage_passage"), ("passage-query negatives",
              "passage_query")) if loss.get(key)]
    if extras:
        rows.append(("InfoNCE options", ", ".join(extras)))
    out = ["## Training", "", "Contrastive (InfoNCE) training with boom_jax.", "", "| setting | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    dims = [d.strip() for d in str(loss.get("matryoshka_dims") or "").split(",") if d.strip()]
    if dims:
        out += ["", f"Matryoshka training at widths {', '.join(dims)}: the first N coordinates of an embedding "
                f"are an embedding of their own. Load a truncated model with "
                f"`SentenceTransformer(model_id, truncate_dim={dims[-1]})` (cosine similarity re-normalizes), or "
                f"`python -m boom_jax.encode --truncate_dim={dims[-1]}` / `python -m boom_jax.evaluate "
                f"--truncate_dim={dims[-1]}`."]
    datasets = training.get("datasets") or []
    if datasets:
        out += ["", "| dataset | task type | examples |", "|---|---|---:|"]
        out += [f"| {d.get('name')} | {d.get('task_type', '-')} | {d.get('examples')} |" for d in datasets]
    return out + [""]


def mergekit_yaml(merge: Mapping[str, Any], member_paths: Mapping[str, str] | None = None) -> str:
    """A mergekit-style YAML recipe for `merge` (method, params, weights, members, base).

    Member models are named by `member_paths` (name -> exported folder), else by their names.
    Methods mergekit does not know are written under our name, marked by a comment.
    """
    method = merge.get("method", "linear")
    mk_method, param_names = MERGEKIT_METHODS.get(method, (method, {}))
    members = merge.get("members") or []
    weights = merge.get("weights") or [None] * len(members)
    member_paths = member_paths or {}
    lines = [] if method in MERGEKIT_METHODS else [f"# {method!r} is a boom_jax method without a mergekit equivalent"]
    lines.append(f"merge_method: {mk_method}")
    if merge.get("base"):
        lines.append(f"base_model: {_py(str(merge['base']))}")
    lines.append("models:")
    for member, weight in zip(members, weights):
        member = member if isinstance(member, Mapping) else {"name": str(member)}
        name = member.get("name")
        path = member_paths.get(name) or member.get("export") or member.get("model") or name
        lines.append(f"  - model: {_py(path)}")
        if weight is not None:
            lines += ["    parameters:", f"      weight: {_fmt(float(weight), 6)}"]
    params = {param_names.get(k, k): v for k, v in (merge.get("params") or {}).items()}
    if params:
        lines.append("parameters:")
        lines += [f"  {k}: {_py(v)}" for k, v in sorted(params.items())]
    lines.append("dtype: float32")
    return "\n".join(lines)


def _merge_section(provenance: Mapping[str, Any]) -> list[str]:
    merge = provenance.get("merge")
    if not merge:
        return []
    members = merge.get("members") or []
    weights = merge.get("weights") or []
    merged_score = _mean((provenance.get("evaluation") or {}).get("dev"))
    out = ["## Merge", "",
           f"Merged with `{merge.get('method')}` from {len(members)} models"
           + (f", parameters `{json.dumps(merge.get('params'), sort_keys=True)}`" if merge.get("params") else "")
           + (f", base `{merge.get('base')}`" if merge.get("base") else "") + ".", "",
           "| member | ratio | seed | weight | steps | examples | subset manifest sha256 | dev score |",
           "|---|---:|---:|---:|---:|---:|---|---:|"]
    for i, m in enumerate(members):
        weight = weights[i] if i < len(weights) else None
        out.append(f"| {m.get('name')} | {_fmt(m.get('ratio'))} | {_fmt(m.get('seed'))} | "
                   f"{_fmt(weight) if weight is not None else 'equal'} | {_fmt(m.get('steps'))} | "
                   f"{_fmt(m.get('examples'))} | `{m.get('manifest_sha256') or '-'}` | {_fmt(m.get('dev_score'))} |")
    out.append(f"| **merged** | | | | | | | {_fmt(merged_score)} |")
    out += ["", "Dev score: mean main score over the dev tasks (x1, higher is better).", ""]
    if merge.get("recipe"):  # the merge's own recipe.yml: reruns it bit for bit
        out += [f"The merge's own recipe (`{merge.get('recipe_file', 'recipe.yml')}`, mergekit's format, paths relative "
                "to its folder; `python -m boom_jax.merge --recipe=FILE --out=DIR` reruns it):", "",
                "```yaml", str(merge["recipe"]).rstrip("\n"), "```", ""]
    else:
        out += ["The same merge as a mergekit-style recipe (paths relative to the run folder; a boom_jax model "
                "folder becomes a Hugging Face folder with `python -m boom_jax.export --checkpoint=PATH --out=DIR`):",
                "", "```yaml", mergekit_yaml(merge), "```", ""]
    return out


def _evaluation_section(provenance: Mapping[str, Any]) -> list[str]:
    dev = (provenance.get("evaluation") or {}).get("dev") or {}
    if not dev:
        return []
    metrics = (provenance.get("evaluation") or {}).get("metrics") or {}
    out = ["## Evaluation", "", "Built-in boom_jax dev tasks (offline):", "", "| task | metric | score |", "|---|---|---:|"]
    out += [f"| {t} | {metrics.get(t, 'ndcg_at_10')} | {_fmt(s)} |" for t, s in sorted(dev.items()) if s is not None]
    return out + [""]


def render_model_card(cfg: ModelConfig, provenance: Mapping[str, Any] | None = None) -> str:
    """README.md text for a model with config `cfg` and the facts of `provenance` (may be empty)."""
    from huggingface_hub import ModelCard

    provenance = provenance or {}
    model_id = provenance.get("repo_id") or PLACEHOLDER_MODEL_ID
    kind = provenance.get("kind", "model")
    what = {
        "trained": "fine-tuned with boom_jax",
        "merged": "merged by boom_jax from a BOOM bag (models trained on per-dataset subsets of the data)",
        "incremental": "updated incrementally by boom_jax (an update model merged with the existing one)",
        "cluster": "merged by boom_jax from one model per cluster of mutually helpful datasets",
    }.get(kind, "exported by boom_jax")
    base = provenance.get("base_model")
    prompts = "\n".join(f"- `{k}`: `{v!r}`" for k, v in sorted((cfg.prompts or {}).items()) if v) or "- (none)"
    body = [f"# {provenance.get('name') or 'Text embedding model'}", "",
            f"A text embedding model {what}" + (f", starting from `{base}`" if base else "") + ".", "",
            "## Model", "", "| property | value |", "|---|---|",
            f"| Architecture | `{cfg.arch}`, {cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size} |",
            f"| Embedding dimension | {cfg.embedding_dim} |", f"| Pooling | `{cfg.pooling}` |",
            f"| L2-normalized | {cfg.normalize} |", f"| Max sequence length | {cfg.max_seq_length} |",
            f"| Similarity | {cfg.similarity} |", "", "Prompts:", prompts, "",
            "## Usage", "", "With sentence-transformers:", "", "```python", st_snippet(cfg, model_id), "```", "",
            "With transformers only:", "", "```python", transformers_snippet(cfg, model_id), "```", ""]
    if model_id == PLACEHOLDER_MODEL_ID:
        body += [f"Replace `{PLACEHOLDER_MODEL_ID}` with the folder or the hub repository id.", ""]
    body += _training_section(provenance.get("training") or {})
    body += _merge_section(provenance)
    body += _evaluation_section(provenance)
    body += ["Provenance: `boom.json` in this folder holds these facts machine-readable.", ""]
    data = card_data(cfg, provenance)
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    ModelCard(text)  # parses and validates the metadata (model-index) offline, as the hub's client does
    return text


def write_card_files(folder: str | os.PathLike, cfg: ModelConfig, provenance: Mapping[str, Any] | None = None) -> None:
    """README.md and boom.json in `folder` (each written atomically; replaces existing ones)."""
    folder = os.fspath(folder)
    provenance = {"format": PROVENANCE_FORMAT, "kind": "model", **dict(provenance or {})}
    provenance.setdefault("model", {"arch": cfg.arch, "embedding_dim": cfg.embedding_dim, "pooling": cfg.pooling,
                                    "normalize": cfg.normalize, "max_seq_length": cfg.max_seq_length,
                                    "similarity": cfg.similarity, "prompts": dict(cfg.prompts)})
    write_json(os.path.join(folder, PROVENANCE_FILE), provenance)
    write_text(os.path.join(folder, CARD_FILE), render_model_card(cfg, provenance))

"""Mine hard negatives for a training file with an embedding model.

  python -m boom_jax.mine --model=DIR --input=DATA --output=OUT.jsonl [--corpus=FILE]
      [--range_for_sampling=10-210] [--num_negatives=15] [--sampling_strategy=top|random]
      [--absolute_margin=M] [--relative_margin=R] [--max_score=S] [--min_score=S] [--output_scores]

DIR: any model path the project loads (HF / sentence-transformers folder, model folder, train
workdir, or builtin:minilm). DATA: the project's JSONL (file, folder or glob) or a `datasets` folder. The corpus is every
positive and negative of DATA, or the texts of --corpus (.txt one per line, .jsonl with "text"),
plus the positives. OUT gets the standard JSONL with the mined negatives as "neg" (and, with
--output_scores, the model's cosines as pos_scores / neg_scores), written atomically.
Semantics of the options: boom_jax/mining.py.
"""

from __future__ import annotations

import json
import os

from absl import flags

from boom_jax import cli
from boom_jax.atomic_io import write_text
from boom_jax.data.sources import load_datasets
from boom_jax.encode import read_texts
from boom_jax.hf.encoders import load_encoder
from boom_jax.mining import MiningOptions, MiningStats, mine_hard_negatives, parse_range
from boom_jax.models.encoder import data_mesh
from boom_jax.training.model_setup import resolve_model_path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares the command-line flags (only when run as a program)."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_string("model", None, "Embedding model: HF / sentence-transformers folder, model folder or workdir.", **f)
    flags.DEFINE_string("input", None, "Training data: JSONL file / folder / glob, or a datasets folder.", **f)
    flags.DEFINE_string("output", None, "Output JSONL with the mined negatives.", **f)
    flags.DEFINE_string("corpus", None, "Texts to mine from (.txt one per line or .jsonl with 'text'); default: "
                        "every positive and negative of --input.", **f)
    flags.DEFINE_string("range_for_sampling", None, "Ranks MIN-MAX of the exact ranking to sample from "
                        "(FlagEmbedding's option, e.g. 10-210); default 0 to sentence-transformers' derived range_max.", **f)
    flags.DEFINE_integer("num_negatives", 15, "Negatives per query.", **f)
    flags.DEFINE_enum("sampling_strategy", "random", ["top", "random"], "top: the best-ranked candidates; random: "
                      "drawn uniformly from the range (FlagEmbedding's way).", **f)
    flags.DEFINE_float("absolute_margin", None, "Drop candidates with score + margin > the lowest positive score.", **f)
    flags.DEFINE_float("relative_margin", None, "Drop candidates above min_pos - |min_pos| * margin "
                       "(e.g. 0.05: at least 5% below the positive).", **f)
    flags.DEFINE_float("max_score", None, "Drop candidates scoring above this.", **f)
    flags.DEFINE_float("min_score", None, "Drop candidates scoring below this.", **f)
    flags.DEFINE_boolean("output_scores", False, "Write pos_scores / neg_scores (the model's cosines).", **f)
    flags.DEFINE_string("query_prompt", None, "Text put before every query (after its own prompt field).", **f)
    flags.DEFINE_string("query_prompt_name", None, "Name of a model prompt put before every query.", **f)
    flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.", **f)
    flags.DEFINE_integer("limit", 0, "Only the first N examples of --input (0 = all).", **f)
    flags.DEFINE_integer("max_seq_length", 0, "Tokens per text (0 = the model's maximum).", **f)
    flags.DEFINE_integer("query_chunk", 1024, "Queries per search block (memory: query_chunk x (k + corpus_chunk)).", **f)
    flags.DEFINE_integer("corpus_chunk", 65536, "Corpus rows per search block.", **f)
    flags.DEFINE_integer("seed", 0, "Seed of the random sampling.", **f)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.", **f)


def load_examples(path: str, limit: int = 0) -> list:
    """The (first ``limit``) examples of a JSONL file / folder / glob or a datasets folder, as one dataset."""
    (dataset,) = load_datasets([{"path": path, "name": "input", "limit": limit or None}])
    return dataset.examples


def write_records(path: str, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def encoder_for(model: str, max_seq_length: int = 0):
    """The model's Encoder ("builtin:minilm" = the packaged all-MiniLM-L6-v2), its inputs cut to
    ``max_seq_length`` tokens when > 0, its rows split over every device JAX sees."""
    return load_encoder(resolve_model_path(model), mesh=data_mesh(),
                        **({"max_seq_length": max_seq_length} if max_seq_length else {}))


def mine_file(model: str, input_path: str, output: str, options, corpus_path: str | None = None,
              overwrite: bool = False, max_seq_length: int = 0, limit: int = 0, **kwargs) -> "object":
    """Mine ``input_path`` with ``model`` into ``output``; returns the MiningStats."""
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output {output!r} already exists (pass --overwrite to replace it)")
    examples = load_examples(input_path, limit)
    corpus = read_texts(corpus_path) if corpus_path else None
    encoder = encoder_for(model, max_seq_length)
    stats = MiningStats()
    mined = mine_hard_negatives(encoder, examples, options, corpus=corpus, stats=stats, **kwargs)
    write_records(output, [m.to_record(options.output_scores) for m in mined])
    return stats


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_arguments(argv, flag_values, "model", "input", "output")
    f = flag_values
    low, high = parse_range(f.range_for_sampling) if f.range_for_sampling else (0, None)
    options = MiningOptions(num_negatives=f.num_negatives, range_min=low, range_max=high,
                            absolute_margin=f.absolute_margin, relative_margin=f.relative_margin,
                            max_score=f.max_score, min_score=f.min_score, sampling_strategy=f.sampling_strategy,
                            seed=f.seed, output_scores=f.output_scores)
    stats = mine_file(f.model, f.input, f.output, options, f.corpus, f.overwrite, f.max_seq_length, f.limit,
                      batch_size=f.batch_size,
                      query_chunk=f.query_chunk, corpus_chunk=f.corpus_chunk, query_prompt=f.query_prompt,
                      query_prompt_name=f.query_prompt_name)
    print(stats.summary())
    print(f"wrote {f.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)

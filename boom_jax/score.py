"""Write teacher scores (pos_scores / neg_scores) for a training file with an embedding model.

  python -m boom_jax.score --teacher=DIR --input=DATA --output=OUT.jsonl [--overwrite]

DIR: any model path the project loads (or builtin:minilm); its cosine of each query with each of its positives and
negatives becomes the record's pos_scores / neg_scores (the fields the distillation losses
loss.kd_weight / loss.margin_mse_weight read). DATA: the project's JSONL or a `datasets` folder.
"""

from __future__ import annotations

import os

from absl import flags

from boom_jax import cli
from boom_jax.mine import encoder_for, load_examples, write_records
from boom_jax.mining import MinedExample, teacher_scores


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=flag_values)
    flags.DEFINE_string("teacher", None, "Teacher embedding model: HF / sentence-transformers folder, model folder "
                        "or workdir.", **f)
    flags.DEFINE_string("input", None, "Training data: JSONL file / folder / glob, or a datasets folder.", **f)
    flags.DEFINE_string("output", None, "Output JSONL with pos_scores / neg_scores.", **f)
    flags.DEFINE_string("query_prompt", None, "Text put before every query (after its own prompt field).", **f)
    flags.DEFINE_string("query_prompt_name", None, "Name of a model prompt put before every query.", **f)
    flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.", **f)
    flags.DEFINE_integer("limit", 0, "Only the first N examples of --input (0 = all).", **f)
    flags.DEFINE_integer("max_seq_length", 0, "Tokens per text (0 = the model's maximum).", **f)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.", **f)


def score_file(teacher: str, input_path: str, output: str, overwrite: bool = False, max_seq_length: int = 0,
               limit: int = 0, **kwargs) -> int:
    """Score ``input_path`` with ``teacher`` into ``output``; returns the number of records written."""
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output {output!r} already exists (pass --overwrite to replace it)")
    examples = load_examples(input_path, limit)
    scores = teacher_scores(encoder_for(teacher, max_seq_length), examples, **kwargs)
    records = [MinedExample(e, e.neg, ps, ns).to_record(True)
               for e, (ps, ns) in zip(examples, scores)]
    write_records(output, records)
    return len(records)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_arguments(argv, flag_values, "teacher", "input", "output")
    f = flag_values
    n = score_file(f.teacher, f.input, f.output, f.overwrite, f.max_seq_length, f.limit, batch_size=f.batch_size,
                   query_prompt=f.query_prompt,
                   query_prompt_name=f.query_prompt_name)
    print(f"wrote {n} records with teacher scores to {f.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)

"""Encode a file of texts into a .npy matrix of embeddings.

  python -m boom_jax.encode --model=DIR --input=FILE --output=OUT.npy [--prompt_name=query] [--batch_size=32]

DIR: an HF / sentence-transformers folder, a model folder or a train workdir. FILE: one text per
line (.txt) or JSON Lines with a "text" field (.jsonl). The output holds float32 [N, D] rows in
input order, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from absl import flags

from boom_jax import cli
from boom_jax.hf.encoders import load_encoder
from boom_jax.model_io import resolve_model_folder
from boom_jax.models.truncation import TruncatedEncoder
from boom_jax.preflight import check_out_not_inside, check_writable_folder


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares the command-line flags (only when run as a program, so importing stays side-effect free)."""
    flags.DEFINE_string("model", None, "Model: HF / sentence-transformers folder, model folder or train workdir.", flag_values=flag_values)
    flags.DEFINE_string("input", None, "Texts: one per line (.txt) or JSON Lines with a 'text' field (.jsonl).", flag_values=flag_values)
    flags.DEFINE_string("output", None, "Where to write the float32 [N, D] embeddings (.npy).", flag_values=flag_values)
    flags.DEFINE_string("prompt_name", None, "Name of a prompt of the model (e.g. query) put before each text.", flag_values=flag_values)
    flags.DEFINE_string("prompt", None, "Literal prompt text put before each text.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.", flag_values=flag_values)
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.", flag_values=flag_values)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.", flag_values=flag_values)
    flags.DEFINE_integer("truncate_dim", 0, "Keep the first N coordinates, re-normalized (a Matryoshka width; "
                         "0 = all).", flag_values=flag_values)


def read_texts(path: str) -> list[str]:
    """Texts of a .txt (one per line) or .jsonl file (field 'text'); errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{lineno}: expected an object with a string field 'text'")
                texts.append(record["text"])
        else:
            texts = [line.rstrip("\n") for line in f]
    return texts


def encode_file(model: str, input_path: str, output: str, prompt_name: str | None = None,
                prompt: str | None = None, batch_size: int = 32, overwrite: bool = False, truncate_dim: int = 0,
                **overrides) -> str:
    """Encode `input_path` with `model` into `output` (.npy); returns the output path. `truncate_dim` > 0
    keeps the first that many coordinates, re-normalized when the model normalizes."""
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output {output!r} already exists (pass --overwrite to replace it)")
    check_out_not_inside(output, {"--input": input_path, "--model": model}, out_key="--output")
    check_writable_folder(os.path.dirname(os.path.abspath(output)), "--output")
    resolve_model_folder(model)  # a missing or unrecognized model fails before the texts are read
    texts = read_texts(input_path)
    encoder = load_encoder(model, **overrides)
    if truncate_dim:
        encoder = TruncatedEncoder(encoder, truncate_dim)
    embeddings = encoder.encode(texts, prompt=prompt, prompt_name=prompt_name, batch_size=batch_size,
                                show_progress_bar=True)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".encode-", suffix=".npy", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, embeddings)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return output


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_arguments(argv, flag_values, "model", "input", "output")
    f = flag_values
    overrides = {"dtype": f.dtype} if f.dtype else {}
    out = encode_file(f.model, f.input, f.output, f.prompt_name, f.prompt, f.batch_size, f.overwrite,
                      truncate_dim=f.truncate_dim, **overrides)
    print(f"wrote {out}")


__all__ = ["encode_file", "load_encoder", "read_texts"]  # load_encoder: boom_jax/hf/encoders.py's, for callers


if __name__ == "__main__":
    define_flags()
    cli.run(main)

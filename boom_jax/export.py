"""Export a model as a Hugging Face + sentence-transformers folder.

  python -m boom_jax.export --checkpoint=PATH --out=DIR [--overwrite]

PATH: a model folder, a train workdir (its final model) or an HF / sentence-transformers folder.
"""

from __future__ import annotations

import os

from absl import app, flags


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares the command-line flags (only when run as a program, so importing stays side-effect free)."""
    flags.DEFINE_string("checkpoint", None, "Model folder, train workdir or HF / sentence-transformers folder.", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder (must not exist or be empty, unless --overwrite).", flag_values=flag_values)
    flags.DEFINE_boolean("overwrite", False, "Replace a non-empty output folder once the new one is complete.", flag_values=flag_values)


def export_checkpoint(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """Load `checkpoint` and write its HF + sentence-transformers folder to `out`; returns `out`."""
    from boom_jax.hf.export import export_sentence_transformers
    from boom_jax.model_io import load_model

    out = os.path.abspath(out)
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"output folder {out!r} is not empty (pass --overwrite to replace it)")
    cfg, params, tokenizer_dir = load_model(checkpoint)
    if tokenizer_dir is None:
        raise ValueError(f"{checkpoint}: the model has no tokenizer files to export")
    return export_sentence_transformers(params, cfg, tokenizer_dir, out, overwrite=overwrite)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f.checkpoint or not f.out:
        raise app.UsageError("--checkpoint and --out are required")
    print(f"exported to {export_checkpoint(f.checkpoint, f.out, f.overwrite)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

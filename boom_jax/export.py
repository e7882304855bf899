"""Export a model as a Hugging Face + sentence-transformers folder.

  python -m boom_jax.export --checkpoint=PATH --out=DIR [--overwrite]

PATH: a model folder, a train workdir (its final model) or an HF / sentence-transformers folder.
"""

from __future__ import annotations

import os

from absl import app, flags

from boom_jax import cli
from boom_jax.hf.export import export_sentence_transformers
from boom_jax.model_io import ModelFolderError, load_model, resolve_model_folder, tokenizer_dir_of
from boom_jax.preflight import check_out_not_inside, check_writable_folder
from boom_jax.training.provenance import find_provenance


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares the command-line flags (only when run as a program, so importing stays side-effect free)."""
    flags.DEFINE_string("checkpoint", None, "Model folder, train workdir or HF / sentence-transformers folder.", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder (must not exist or be empty, unless --overwrite).", flag_values=flag_values)
    flags.DEFINE_boolean("overwrite", False, "Replace a non-empty output folder once the new one is complete.", flag_values=flag_values)


def export_checkpoint(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """Load `checkpoint` and write its HF + sentence-transformers folder (with the model card and the
    boom.json of the run that made it, when there is one) to `out`; returns `out`."""
    out = os.path.abspath(out)
    check_out_not_inside(out, {"--checkpoint": checkpoint})
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"output folder {out!r} is not empty (pass --overwrite to replace it)")
    check_writable_folder(out, "--out")
    folder = resolve_model_folder(checkpoint)  # a missing or unrecognized path fails before any weight is read
    if tokenizer_dir_of(folder or checkpoint) is None:
        raise ModelFolderError(f"{checkpoint}: the model has no tokenizer files to export (looked for "
                               f"tokenizer.json / tokenizer_config.json in {folder or checkpoint} and its tokenizer/)")
    cfg, params, tokenizer_dir = load_model(checkpoint)
    provenance = find_provenance(checkpoint)  # a train / bag workdir's boom.json: the card says how it was made
    return export_sentence_transformers(params, cfg, tokenizer_dir, out, overwrite=overwrite, provenance=provenance)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_arguments(argv, flag_values)
    f = flag_values
    if not f.checkpoint or not f.out:
        raise app.UsageError("--checkpoint and --out are required")
    print(f"exported to {export_checkpoint(f.checkpoint, f.out, f.overwrite)}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)

"""Merge trained embedding models into one.

Usage:
  python -m boom_jax.merge --method=multislerp --out=DIR [--weights=0.5,0.5] [--base=PATH]
      [--streaming] [--overwrite] [--param=density=0.5 ...] INPUT...
  python -m boom_jax.merge --recipe=merge.yml --out=DIR [--streaming] [--overwrite]

A recipe is mergekit's YAML format (boom_jax/merging/recipe.py); every merge writes its own as
DIR/recipe.yml, and running that recipe reproduces the model bit for bit.

INPUT is a model folder, a train workdir (its WORKDIR/model), a bag workdir (every DIR/members/*/) or a
Hugging Face / sentence-transformers folder. DIR receives a model folder (model_config.json, params/,
tokenizer/) and DIR/export, the sentence-transformers folder. Run with --help for the methods.
"""

from __future__ import annotations

import ast
import sys

from absl import app, flags, logging

from boom_jax import cli
from boom_jax.malloc_arenas import cap_malloc_arenas
from boom_jax.merging.methods import MERGE_METHODS
from boom_jax.merging.recipe import read_recipe
from boom_jax.merging.streaming import merge_models, merge_recipe
from boom_jax.preflight import check_out_not_inside

_METHOD_HELP = "Merge method. One of:\n" + "\n".join(
    f"  {m.name}: {m.description}"
    + (f" [params: {', '.join(m.params)}]" if m.params else "")
    + (" (needs --base)" if m.needs_base else "")
    for m in MERGE_METHODS.values()
)

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "multislerp", list(MERGE_METHODS), _METHOD_HELP)
flags.DEFINE_string("out", None, "Output folder (a model folder plus export/). Refused when not empty, unless --overwrite.")
flags.DEFINE_list("weights", None, "One weight per input model, comma separated (default: uniform).")
flags.DEFINE_string("base", None, "Base model (task-vector space; required by task_arithmetic, ties, dare_*, model_stock).")
flags.DEFINE_bool("streaming", False, "Merge leaf by leaf from disk (memory ~ output + 2-3 x largest tensor for linear / multislerp, "
                  "(K+2) x largest tensor for the others).")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")
flags.DEFINE_bool("export", True, "Also write the sentence-transformers folder to OUT/export.")
flags.DEFINE_multi_string("param", [], "Method parameter NAME=VALUE (e.g. density=0.5, lambda_=0.8, t=0.3, seed=1).")
flags.DEFINE_multi_string("include", None, "Merge only parameters whose path fullmatches one of these regexes.")
flags.DEFINE_multi_string("exclude", None, "Do not merge parameters matching these regexes (copied from --base or the first input).")
flags.DEFINE_string("recipe", None, "A merge recipe (mergekit's YAML: merge_method, base_model, models with per-model "
                    "weight/density, parameters); replaces --method, --weights, --base, --param and INPUT.")
flags.DEFINE_integer("group_mb", 0, "Streaming: MB of tensors read per input at once (0 = the largest tensor).")


def parse_params(items: list[str]) -> dict[str, object]:
    """{'density': 0.5} from ['density=0.5']; values are Python literals, else strings."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise app.UsageError(f"--param={item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:
                out[name.strip()] = float(value)  # nan, inf: refused by the method's range check
            except ValueError:
                out[name.strip()] = value
    return out


def parse_weights(items: list[str] | None) -> list[float] | None:
    if items is None:
        return None
    try:
        return [float(w) for w in items]
    except ValueError:
        raise app.UsageError(f"--weights={','.join(items)}: expected comma-separated numbers") from None


def main(argv: list[str]) -> None:
    cap_malloc_arenas()  # reader threads' buffers otherwise strand pages in many arenas (malloc_arenas.py)
    inputs = argv[1:]
    if FLAGS.recipe and (inputs or FLAGS.weights or FLAGS.base or FLAGS.param or FLAGS["method"].present):
        raise app.UsageError("--recipe holds the models, method, weights, base and parameters: drop INPUT, "
                             "--method, --weights, --base and --param")
    if not inputs and not FLAGS.recipe:
        raise app.UsageError("no INPUT models given")
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    read = [("INPUT", p) for p in inputs] + ([("--base", FLAGS.base)] if FLAGS.base else [])
    if FLAGS.recipe:
        recipe = read_recipe(FLAGS.recipe)
        read = [(f"{FLAGS.recipe}: model", p) for p in recipe.members] + (
            [(f"{FLAGS.recipe}: base_model", recipe.base)] if recipe.base else [])
    # the output replaces a folder: never one being read (not even with --overwrite)
    check_out_not_inside(FLAGS.out, read)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the way

    try:
        if FLAGS.recipe:
            out = merge_recipe(FLAGS.recipe, FLAGS.out, streaming=FLAGS.streaming, export=FLAGS.export,
                               overwrite=FLAGS.overwrite, group_bytes=FLAGS.group_mb * 2**20 or None)
            print(f"merged recipe {FLAGS.recipe} into {out}", file=sys.stderr)
            return
        out = merge_models(
            inputs,
            FLAGS.out,
            FLAGS.method,
            weights=parse_weights(FLAGS.weights),
            base=FLAGS.base,
            include=FLAGS.include,
            exclude=FLAGS.exclude,
            streaming=FLAGS.streaming,
            export=FLAGS.export,
            overwrite=FLAGS.overwrite,
            group_bytes=FLAGS.group_mb * 2**20 or None,
            **parse_params(FLAGS.param),
        )
    except (ValueError, FileExistsError) as e:  # bad input: every project error is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"merged {len(inputs)} input(s) with {FLAGS.method} into {out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)  # bad input: one line, exit code 2

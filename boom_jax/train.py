"""Train a text-embedding model from a config file.

    python -m boom_jax.train --config=configs/minilm_bls.py[:smoke] --workdir=runs/minilm \\
        [--config.train.batch_size=64 ...]

Shipped configs: configs/tiny.py (a tiny random model, for tests), configs/minilm_bls.py
(all-MiniLM-L6-v2 on the built-in corpus, offline), configs/qwen3_0p6b_bls.py and
configs/qwen3_4b_lora_bls.py (the paper's recipes; need --config.model.path=/path/to/Qwen3 and the BGE
data); each takes :smoke for a few quick steps.

The config is a Python file whose get_config(arg) returns an ml_collections.ConfigDict (see
configs/common.py for every key); `--config.key=value` overrides any key, keeping its type. The
config is validated at start: an unknown key, a wrong type or an impossible combination stops the
run with a message naming the key. Re-running the same command resumes from the workdir's latest
checkpoint; SIGTERM saves a checkpoint before exiting. The workdir receives metrics.jsonl,
TensorBoard events, checkpoints/, config.json, model/ (a model folder) and export/ (a
sentence-transformers folder).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from boom_jax.training.config_validation import ConfigError, check_override_keys

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS, sys_argv: Sequence[str] | None = None) -> None:
    config_flags.DEFINE_config_file(
        "config", None,
        "Training config file, optionally with an argument: configs/NAME.py[:ARG] (e.g. :smoke). "
        "Override any key with --config.section.key=value.",
        flag_values=flag_values, lock_config=True, sys_argv=list(sys_argv) if sys_argv is not None else None)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, model and export go here. "
                        "An existing workdir is resumed from its latest checkpoint.", flag_values=flag_values)


def parse_config(argv: Sequence[str]):
    """The ConfigDict that `argv` (e.g. ["prog", "--config=configs/tiny.py", "--config.seed=1"]) selects."""
    check_override_keys(argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values, sys_argv=argv)
    flag_values(list(argv))
    return flag_values.config


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 shows them
    from boom_jax.training.loop import NonFiniteLossError, train

    try:
        result = train(FLAGS.config, FLAGS.workdir)
    except (ConfigError, NonFiniteLossError) as err:
        sys.exit(f"error: {err}")
    if result.preempted:
        print(f"preempted at step {result.steps}/{result.total_steps}; checkpoint saved in {result.workdir}. "
              f"Re-run the same command to resume.")
        return
    print(f"done: {result.steps} steps, final loss {result.final_loss:.4f}, workdir {result.workdir}")


def run() -> None:
    try:
        check_override_keys(sys.argv)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()

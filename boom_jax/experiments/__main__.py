"""Run the strategy comparison: python -m boom_jax.experiments --config=configs/experiment.py[:smoke] --workdir=DIR

Trains (or resumes) every run of the plan, merges, evaluates and writes DIR/RESULTS.md with charts.
Override any key with --config.section.key=value, e.g. --config.experiment.bag_workdir=runs/bag to
reuse a bag trained with `python -m boom_jax.train --config=configs/bag.py --workdir=runs/bag`.
"""

from __future__ import annotations

import shlex
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config: configs/experiment.py[:smoke|:tiny]; override keys with "
        "--config.section.key=value.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Experiment folder; re-running the same command resumes it.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from boom_jax.boom.bag import BagConfigError
    from boom_jax.boom.incremental import IncrementalConfigError
    from boom_jax.experiments.plan import ExperimentConfigError
    from boom_jax.experiments.runner import run_experiment
    from boom_jax.training.compile_cache import enable_compilation_cache
    from boom_jax.training.config_validation import ConfigError

    enable_compilation_cache()  # the experiment's runs share shapes: each program compiles once
    command = "python -m boom_jax.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        run_experiment(FLAGS.config, FLAGS.workdir, command=command)
    except (ExperimentConfigError, ConfigError, BagConfigError, IncrementalConfigError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)

"""Run the strategy comparison: python -m boom_jax.experiments --config=configs/experiment.py[:smoke] --workdir=DIR

Trains (or resumes) every run of the plan, merges, evaluates and writes DIR/RESULTS.md with charts.
Override any key with --config.section.key=value, e.g. --config.experiment.bag_workdir=runs/bag to
reuse a bag trained with `python -m boom_jax.train --config=configs/bag.py --workdir=runs/bag`.
"""

from __future__ import annotations

import shlex
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from boom_jax import cli
from boom_jax.experiments.runner import run_experiment
from boom_jax.training.compile_cache import enable_compilation_cache

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config: configs/experiment.py[:smoke|:tiny]; override keys with "
        "--config.section.key=value.", lock_config=True, flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Experiment folder; re-running the same command resumes it.",
                        flag_values=flag_values)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """Runs (or resumes) the experiment; bad input raises (one line, exit code 2 through boom_jax.cli)."""
    cli.check_arguments(argv, flag_values, "workdir")
    cli.quiet_dependencies(flag_values)

    enable_compilation_cache()  # the experiment's runs share shapes: each program compiles once
    command = "python -m boom_jax.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_experiment(flag_values.config, flag_values.workdir, command=command)


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)

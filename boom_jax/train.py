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

A config with a `bag` section (configs/bag.py) trains a whole BOOM bag and merges it (see
boom_jax.boom.bag); one with an `incremental` section (configs/incremental.py) runs an incremental
update (boom_jax.boom.incremental); one with a `cluster` section (configs/cluster_merge.py) runs
cluster-level merging (boom_jax.boom.clusters). --dry_run compiles the train step for the configured
mesh and prints memory per device and FLOPs per step instead of training. Multi-host runs pass --distributed
(launch/gpu_slurm.sh and launch/tpu_pod.sh do).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from boom_jax import cli
from boom_jax.training.compile_cache import enable_compilation_cache
from boom_jax.training.config_validation import ConfigError, check_override_keys
from boom_jax.training.distributed import maybe_initialize
from boom_jax.training.dry_run import dry_run, format_report
from boom_jax.training.loop import train

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS, sys_argv: Sequence[str] | None = None) -> None:
    config_flags.DEFINE_config_file(
        "config", None,
        "Training config file, optionally with an argument: configs/NAME.py[:ARG] (e.g. :smoke). "
        "Override any key with --config.section.key=value.",
        flag_values=flag_values, lock_config=True, sys_argv=list(sys_argv) if sys_argv is not None else None)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, model and export go here. "
                        "An existing workdir is resumed from its latest checkpoint.", flag_values=flag_values)
    flags.DEFINE_bool("dry_run", False, "Only lower and compile the train step for the configured mesh and "
                      "shapes; print parameter, optimizer and activation memory per device and FLOPs per step.",
                      flag_values=flag_values)
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host GPU / TPU pods). "
                      "Without the three flags below JAX finds the cluster itself (TPU, Slurm).",
                      flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (with --distributed).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).", flag_values=flag_values)


def parse_config(argv: Sequence[str]):
    """The ConfigDict that `argv` (e.g. ["prog", "--config=configs/tiny.py", "--config.seed=1"]) selects."""
    check_override_keys(argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values, sys_argv=argv)
    flag_values(list(argv))
    return flag_values.config


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """Runs what the parsed flags say: a dry run, a workflow (bag, incremental, cluster) or one training run."""
    cli.check_arguments(argv, flag_values)
    cli.quiet_dependencies(flag_values)  # Orbax logs every save at INFO; -v 0 shows them
    enable_compilation_cache()  # later runs and bag members with the same shapes skip recompiling
    maybe_initialize(flag_values.distributed, flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
    if flag_values.dry_run:
        report = dry_run(flag_values.config)
        print(format_report(report))
        if report.get("fits") is False:  # None: no memory limit known, nothing to refuse
            sys.exit(1)
        return
    # lazy: the workflows evaluate models, and the evaluation imports mteb (seconds); a plain run needs none
    from boom_jax.boom.bag import run_bag
    from boom_jax.boom.clusters import run_cluster_merge
    from boom_jax.boom.incremental import run_incremental

    # A config section that turns the run into a whole workflow, and the function that runs it.
    for section, workflow in (("bag", run_bag), ("incremental", run_incremental), ("cluster", run_cluster_merge)):
        if section in flag_values.config:
            workflow(flag_values.config, flag_values.workdir)
            return
    result = train(flag_values.config, flag_values.workdir)
    if result.preempted:
        print(f"preempted at step {result.steps}/{result.total_steps}; checkpoint saved in {result.workdir}. "
              f"Re-run the same command to resume.")
        return
    print(f"done: {result.steps} steps, final loss {result.final_loss:.4f}, workdir {result.workdir}")


def run() -> None:
    """The command: every bad input (flags, config, data, model folders) one line and exit code 2."""
    try:
        check_override_keys(sys.argv)
    except ConfigError as err:
        sys.exit(cli.report(err))
    define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)


if __name__ == "__main__":
    run()

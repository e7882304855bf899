#!/usr/bin/env bash
# Train on this machine: every local device (CPU, one or more GPUs) in one process.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [--devices=N] [--gpus=LIST] CONFIG WORKDIR [TRAIN_FLAGS...]

Runs `python -m boom_jax.train --config=CONFIG --workdir=WORKDIR TRAIN_FLAGS...` on this machine.

  CONFIG          a config file with optional argument, e.g. configs/bag.py or configs/bag.py:smoke
  WORKDIR         run folder; re-running the same command resumes from its latest checkpoint
  --devices=N     on CPU, simulate N devices (XLA --xla_force_host_platform_device_count), e.g. to
                  try a mesh before launching it on a pod
  --gpus=LIST     restrict to these GPUs (CUDA_VISIBLE_DEVICES), e.g. --gpus=0,1
  -h, --help      this help

Examples:
  launch/local.sh configs/bag.py:smoke runs/smoke
  launch/local.sh --gpus=0,1,2,3 configs/qwen3_0p6b_bls.py runs/q06 --config.model.path=/models/Qwen3-0.6B
USAGE
}

PYTHON=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --devices=*) export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${1#*=}"; export JAX_PLATFORMS=cpu; shift ;;
    --gpus=*) export CUDA_VISIBLE_DEVICES="${1#*=}"; shift ;;
    --) shift; break ;;
    -*) echo "launch/local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
config=$1; workdir=$2; shift 2
exec "$PYTHON" -m boom_jax.train --config="$config" --workdir="$workdir" "$@"

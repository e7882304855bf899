#!/usr/bin/env bash
# Reproduce the BOOM strategy comparison on the built-in corpus, then print its RESULTS.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/reproduce.sh [--smoke|--full] [--bag=BAG_WORKDIR] [WORKDIR] [CONFIG_FLAGS...]

Runs `python -m boom_jax.experiments --config=configs/experiment.py --workdir=WORKDIR CONFIG_FLAGS...`
(3 seeds of: BLS, task-level sequential, cluster-level merging, BOOM with the
ratio sets {20,40,60,80,100} and {80,100}, an incremental update; all evaluated on the built-in dev
tasks, with intervals over seeds and paired bootstrap comparisons against BLS), then prints
WORKDIR/RESULTS.md. Re-running the same command resumes: finished runs are skipped. Sized for about
90 minutes on 2 CPU cores; on a GPU or TPU pass a larger config, e.g.
--config.data.limit=0 --config.train.batch_size=256 (see README).

  WORKDIR         experiment folder (default: runs/experiment, or runs/experiment_smoke with --smoke)
  --smoke         the tiny-slice variant (configs/experiment.py:smoke), for a quick look
  --full          every strategy once (configs/experiment.py:full: adds dataset-level sequential and
                  merging, two-stage, the merge-operator study and learned merge weights)
  --bag=DIR       with --full: reuse a bag trained with
                  `python -m boom_jax.train --config=configs/bag.py --workdir=DIR` (same sizes)
                  instead of training one in WORKDIR/boom
  -h, --help      this help

Examples:
  launch/reproduce.sh
  launch/reproduce.sh --full --bag=runs/bag runs/experiment_full
  launch/reproduce.sh runs/exp --config.experiment.strategies=bls,boom
USAGE
}

PYTHON=${PYTHON:-python3}
config=configs/experiment.py
workdir=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --smoke) config=configs/experiment.py:smoke; shift ;;
    --full) config=configs/experiment.py:full; shift ;;
    --bag=*) extra+=("--config.experiment.bag_workdir=${1#*=}"); shift ;;
    --config.*) extra+=("$1"); shift ;;
    --) shift; break ;;
    -*) echo "launch/reproduce.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ -z "$workdir" ]]; then workdir=$1; shift; else echo "launch/reproduce.sh: unexpected argument $1 (see --help)" >&2; exit 2; fi ;;
  esac
done
extra+=("$@")
if [[ -z "$workdir" ]]; then
  workdir=runs/experiment
  [[ "$config" == *:smoke ]] && workdir=runs/experiment_smoke
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$PYTHON" -m boom_jax.experiments --config="$repo/$config" --workdir="$workdir" "${extra[@]}"
echo
cat "$workdir/RESULTS.md"

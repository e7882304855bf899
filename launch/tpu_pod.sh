#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create or reuse a TPU VM, ship the code, install, run on all workers.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --name=TPU --zone=ZONE [--type=v5litepod-16] [--version=RUNTIME]
                         [--project=PROJECT] [--dry-run] CONFIG WORKDIR [TRAIN_FLAGS...]

1. Creates the TPU VM NAME (gcloud compute tpus tpu-vm create) unless it exists.
2. Copies this repository to every worker (tar over `gcloud ... scp --worker=all`).
3. Installs requirements.txt and jax[tpu] on every worker (once; a marker file skips it later).
4. Runs `python -m boom_jax.train --distributed --config=CONFIG --workdir=WORKDIR ...` on ALL workers
   with the same flags (`ssh --worker=all`). On TPU, jax.distributed.initialize() finds the
   coordinator by itself. WORKDIR should be a gs:// bucket path or a shared disk: every host takes
   part in Orbax saves; only process 0 logs and exports.

  --name=TPU          TPU VM name (required)
  --zone=ZONE         zone, e.g. us-central2-b (required)
  --type=TYPE         accelerator type when creating (default v5litepod-16)
  --version=RUNTIME   TPU software version when creating (default v2-alpha-tpuv5-lite)
  --project=PROJECT   Google Cloud project (default: gcloud's configured one)
  --dry-run           print the gcloud commands instead of running them
  -h, --help          this help

Example: launch/tpu_pod.sh --name=boom --zone=us-central2-b --type=v4-32 \
           configs/qwen3_0p6b_bls.py gs://my-bucket/runs/q06 --config.model.path=/data/Qwen3-0.6B
Check first that the config fits the slice, compiled for it on any machine (needs libtpu==0.0.42.1):
  python -m boom_jax.training.dry_run --config=CONFIG --topology=v4:2x2x4 [TRAIN_FLAGS...]
USAGE
}

name=""; zone=""; type="v5litepod-16"; version="v2-alpha-tpuv5-lite"; project=""; dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name=*) name=${1#*=}; shift ;;
    --zone=*) zone=${1#*=}; shift ;;
    --type=*) type=${1#*=}; shift ;;
    --version=*) version=${1#*=}; shift ;;
    --project=*) project=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "launch/tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ -z $name || -z $zone || $# -lt 2 ]]; then usage >&2; exit 2; fi
config=$1; workdir=$2; shift 2
extra=$(printf ' %q' "$@")
repo=$(cd "$(dirname "$0")/.." && pwd)
gc=(gcloud compute tpus tpu-vm)
common=(--zone="$zone" ${project:+--project="$project"})

run() { if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if [[ $dry_run == 1 ]] || ! "${gc[@]}" describe "$name" "${common[@]}" >/dev/null 2>&1; then
  run "${gc[@]}" create "$name" "${common[@]}" --accelerator-type="$type" --version="$version"
fi
if [[ $dry_run == 1 ]]; then archive=/tmp/boom_jax.tar.gz; else archive=$(mktemp /tmp/boom_jax.XXXXXX.tar.gz); fi
run tar -czf "$archive" -C "$repo" --exclude=.git --exclude=.venv --exclude=runs .
run "${gc[@]}" scp "$archive" "$name":boom_jax.tar.gz --worker=all "${common[@]}"
setup='mkdir -p boom_jax && tar -xzf boom_jax.tar.gz -C boom_jax && cd boom_jax &&
  if [ ! -f .installed ]; then python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt &&
  .venv/bin/pip install -q -U "jax[tpu]==0.10.2" && touch .installed; fi'
train="cd boom_jax && .venv/bin/python -m boom_jax.train --distributed --config=${config} --workdir=${workdir}${extra}"
run "${gc[@]}" ssh "$name" --worker=all "${common[@]}" --command="$setup"
run "${gc[@]}" ssh "$name" --worker=all "${common[@]}" --command="$train"

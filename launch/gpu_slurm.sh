#!/usr/bin/env bash
# Multi-node GPU training under Slurm: one JAX process per node, all local GPUs per process.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/gpu_slurm.sh [--nodes=N] [--gpus-per-node=G] [--partition=P] [--time=HH:MM:SS]
                           [--venv=DIR] [--dry-run] CONFIG WORKDIR [TRAIN_FLAGS...]

Submits (sbatch) a job that runs `python -m boom_jax.train --distributed ...` on N nodes with
jax[cuda12]. Each node runs one process that owns its G GPUs; the coordinator is the job's first node
(port 12355), taken from SLURM_JOB_NODELIST, so jax.distributed.initialize needs no other setup.
WORKDIR must be on a filesystem all nodes share (Orbax checkpoints are written by every host).

  --nodes=N           nodes (default 2)
  --gpus-per-node=G   GPUs per node (default 8)
  --partition=P       Slurm partition (default: the cluster's default)
  --time=T            wall-time limit (default 24:00:00)
  --venv=DIR          virtualenv with requirements.txt and jax[cuda12] installed (default .venv)
  --dry-run           print the batch script instead of submitting it
  -h, --help          this help

Install once on the cluster:  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
                              && .venv/bin/pip install -U "jax[cuda12]==0.10.2"
Example: launch/gpu_slurm.sh --nodes=4 configs/qwen3_0p6b_bls.py /shared/runs/q06 \
           --config.model.path=/shared/models/Qwen3-0.6B
Check first that the config fits N x G GPUs (any machine, no GPU needed; reads config.json only):
  python -m boom_jax.training.dry_run --config=CONFIG --devices=N*G --device_memory_gb=80 [TRAIN_FLAGS...]
USAGE
}

nodes=2; gpus=8; partition=""; time_limit="24:00:00"; venv=".venv"; dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --gpus-per-node=*) gpus=${1#*=}; shift ;;
    --partition=*) partition=${1#*=}; shift ;;
    --time=*) time_limit=${1#*=}; shift ;;
    --venv=*) venv=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "launch/gpu_slurm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
config=$1; workdir=$2; shift 2
extra=$(printf ' %q' "$@")
repo=$(cd "$(dirname "$0")/.." && pwd)

script=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=boom_jax
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${gpus}
#SBATCH --time=${time_limit}
#SBATCH --output=${workdir}/slurm-%j.out
${partition:+#SBATCH --partition=${partition}}
set -euo pipefail
cd ${repo}
coordinator=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)
srun --kill-on-bad-exit=1 bash -c '${venv}/bin/python -m boom_jax.train --config=${config} --workdir=${workdir} \
  --distributed --coordinator_address='"\$coordinator"':12355 \
  --num_processes=\$SLURM_NTASKS --process_id=\$SLURM_PROCID${extra}'
SBATCH
)
if [[ $dry_run == 1 ]]; then echo "$script"; exit 0; fi
mkdir -p "$workdir"
echo "$script" | sbatch

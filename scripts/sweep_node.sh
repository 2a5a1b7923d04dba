#!/usr/bin/env bash
# Run a sweep preset on this machine, one job per visible GPU (or per CPU core without one), K jobs per device with
# JOBS_PER_DEVICE=K; print the command, run it, then the commands that show its state and its report.
#   scripts/sweep_node.sh freeze_vs_n 'seed=range(3)'
#   JOBS_PER_DEVICE=4 scripts/sweep_node.sh freeze_vs_n target.n_per_class=1,2,5
#   PULL_WORKERS=4 scripts/sweep_node.sh freeze_vs_n    # pull mode: 4 workers drain the sweep folder (sweeps.md)
# The sweep's folder holds its state: run the same line again to resume it (finished points are skipped).
set -euo pipefail
source "$(dirname "$0")/sweep_common.sh"
usage_or_experiment "$@"
experiment=$1; shift
per_device=${JOBS_PER_DEVICE:-1}
# devices: the GPUs this process may use (CUDA_VISIBLE_DEVICES, else nvidia-smi), or the CPU cores
if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
  devices=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  devices=$(nvidia-smi -L | grep -c '^GPU')
else
  devices=$(env -u OMP_NUM_THREADS nproc)   # the cores this process may use (nproc alone honours OMP_NUM_THREADS)
fi
if [[ -n ${PULL_WORKERS:-} ]]; then  # pull mode: W workers, each job leasing its device as under local_parallel
  run_sweep "" "$python" -m transferlab.train -m "experiment=$experiment" hydra/launcher=pull \
    "hydra.launcher.workers=$PULL_WORKERS" "lease.per_device=$per_device" "$@"
fi
run_sweep "" "$python" -m transferlab.train -m "experiment=$experiment" hydra/launcher=local_parallel \
  "hydra.launcher.n_jobs=$((devices * per_device))" "lease.per_device=$per_device" "$@"

#!/usr/bin/env bash
# Submit a sweep preset to SLURM as one array (a task per point, or per vectorised group), detached: print the
# command, submit, then the commands that show its state and its report. Cluster settings are overrides:
#   scripts/sweep_slurm.sh freeze_vs_n hydra.launcher.partition=gpu hydra.launcher.account=myproj
#   scripts/sweep_slurm.sh freeze_vs_n hydra.launcher.detach=false      # wait for the array here instead
#   PULL_WORKERS=8 scripts/sweep_slurm.sh freeze_vs_n ...   # pull mode: 8 worker jobs drain the sweep (waits here)
# conf/hydra/launcher/slurm.yaml lists every launcher key (time limit, GPUs per task, requeue, array parallelism).
set -euo pipefail
source "$(dirname "$0")/sweep_common.sh"
usage_or_experiment "$@"
experiment=$1; shift
command -v sbatch >/dev/null 2>&1 || { echo "$0: sbatch not found: run this on a SLURM login node" >&2; exit 2; }
if [[ -n ${PULL_WORKERS:-} ]]; then  # pull mode: the submitting process waits for its workers (no detach)
  run_sweep "" "$python" -m transferlab.train -m "experiment=$experiment" hydra/launcher=slurm \
    hydra.launcher.pull=true "hydra.launcher.workers=$PULL_WORKERS" "$@"
fi
run_sweep "   (once the points are done)" "$python" -m transferlab.train -m "experiment=$experiment" \
  hydra/launcher=slurm hydra.launcher.detach=true "$@"

#!/usr/bin/env bash
# Submit a sweep preset to SLURM as one array (a task per point, or per vectorised group), detached: print the
# command, submit, then the commands that show its state and its report. Cluster settings are overrides:
#   scripts/sweep_slurm.sh freeze_vs_n hydra.launcher.partition=gpu hydra.launcher.account=myproj
#   scripts/sweep_slurm.sh freeze_vs_n hydra.launcher.detach=false      # wait for the array here instead
# conf/hydra/launcher/slurm.yaml lists every launcher key (time limit, GPUs per task, requeue, array parallelism).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 EXPERIMENT [overrides...]   (EXPERIMENT: a file of conf/experiment/, e.g. freeze_vs_n)" >&2
  exit 2
fi
experiment=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}; [[ -x $python ]] || python=python
command -v sbatch >/dev/null 2>&1 || { echo "$0: sbatch not found: run this on a SLURM login node" >&2; exit 2; }
cmd=("$python" -m transferlab.train -m "experiment=$experiment" hydra/launcher=slurm hydra.launcher.detach=true "$@")
echo "+ ${cmd[*]}"
log=$(mktemp); trap 'rm -f "$log"' EXIT
status=0
"${cmd[@]}" | tee "$log" || status=${PIPESTATUS[0]}
# the sweeper's last line names the sweep's folder: "sweep NAME: 3 ok, 0 failed, 0 skipped  (FOLDER)"
sweep_dir=$(sed -n 's/^sweep .*  (\(.*\))$/\1/p' "$log" | tail -n 1)
sweep_dir=${sweep_dir:-<the sweep folder>}
echo "state:  $python -m transferlab.status $sweep_dir"
echo "report: $python -m transferlab.report $sweep_dir   (once the points are done)"
exit $status

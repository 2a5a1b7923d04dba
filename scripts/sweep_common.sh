# Shared by scripts/sweep_node.sh and scripts/sweep_slurm.sh (sourced, not run): the usage check, the interpreter,
# and running a sweep command so that its output is shown and its folder named afterwards.

# usage_or_experiment ARGS...: exit 2 with the usage line unless the first argument names a preset
usage_or_experiment() {
  if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 EXPERIMENT [overrides...]   (EXPERIMENT: a file of conf/experiment/, e.g. freeze_vs_n)" >&2
    exit 2
  fi
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}; [[ -x $python ]] || python=python

# run_sweep NOTE CMD...: print CMD, run it, then the status and report lines for the sweep's folder (the
# sweeper's summary line names it: "sweep NAME: 3 ok, 0 failed, 0 skipped  (FOLDER)"); exit with CMD's status
run_sweep() {
  local note=$1; shift
  echo "+ $*"
  local log status=0 sweep_dir
  log=$(mktemp)
  "$@" | tee "$log" || status=${PIPESTATUS[0]}
  sweep_dir=$(sed -n 's/^sweep .*  (\(.*\))$/\1/p' "$log" | tail -n 1)
  rm -f "$log"
  sweep_dir=${sweep_dir:-<the sweep folder>}
  echo "state:  $python -m transferlab.status $sweep_dir"
  echo "report: $python -m transferlab.report $sweep_dir$note"
  exit $status
}

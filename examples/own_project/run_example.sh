#!/usr/bin/env bash
# The own-project example end to end, from this folder: a 4-point sweep of conf/experiment/mine.yaml (own backbone,
# own task, our transfer presets), then the report. Uses whatever transferlab-train / transferlab-report come first
# on PATH (an installed wheel, or a checkout's venv) and nothing of a transferlab checkout.
#
#   ./run_example.sh                                   # the preset as written
#   ./run_example.sh train.max_epochs=2 pretrain.max_epochs=2   # extra overrides for the sweep (a smoke test)
#
# mypkg is made importable with PYTHONPATH (this folder); `pip install -e .` here does the same for good.
# Outputs go to $TRANSFERLAB_ROOT/outputs (default: this folder's outputs/). Exits non-zero, saying what is
# missing, when a tool is not on PATH, the sweep fails, a point is not done or the report lacks a file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
fail() { echo "run_example.sh: $*" >&2; exit 1; }

for tool in transferlab-train transferlab-report; do
    command -v "$tool" >/dev/null || fail "$tool is not on PATH (pip install transferlab, or activate its venv)"
done
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
root="${TRANSFERLAB_ROOT:-$here}"
export TRANSFERLAB_ROOT="$root"
sweep="$root/outputs/sweeps/mine"

echo "+ transferlab-train --config-dir conf -m experiment=mine $*"
transferlab-train --config-dir conf -m experiment=mine "$@" || fail "the sweep failed (see above)"

status="$(transferlab-status "$sweep")" || fail "transferlab-status $sweep failed"
summary="$(printf '%s\n' "$status" | head -n 1)"
[[ "$summary" =~ ^0\ failed,\ 0\ running,\ 0\ queued,\ 0\ stale,\ 0\ missing,\ ([0-9]+)\ done ]] \
    || fail "not every point of the sweep is done: $summary"
points="${BASH_REMATCH[1]}"
[ "$points" -ge 1 ] || fail "the sweep in $sweep has no point"
grep -q '"backbone": "tiny_conv"' "$sweep"/*/result.json || fail "the results do not name the own backbone tiny_conv"

echo "+ transferlab-report $sweep"
transferlab-report "$sweep" || fail "the report failed (see above)"
for file in report.html results.csv summary.csv; do
    [ -s "$sweep/$file" ] || fail "the report did not write $sweep/$file"
done
echo "run_example.sh: ok: $points points and the report in $sweep"

#!/usr/bin/env bash
# The wheel as a researcher gets it (make test-wheel; .ci/run after make test). Builds the wheel from this checkout's
# files, installs it (not editable) into a fresh virtual environment inside a researcher's project folder outside
# the checkout (its own git repository, its own conf/), and from that folder runs what docs/extending.md shows:
#   transferlab-train                       the default experiment, a tiny budget
#   transferlab-train -m ...                a 2-point sweep, then transferlab-status and transferlab-report on it
#   transferlab-train --config-dir conf -m experiment=mine    the project's own preset on our groups, 2 points
#   transferlab-score ...                   transferability scores for one point (--json)
# checking what each wrote (result.json ok, the sweep's summary line, the report's files). Then, when the checkout
# has it, examples/own_project/run_example.sh with this environment's bin/ first on PATH, from a scratch folder.
#   WORK=<folder outside the checkout>   keep everything there (default: a temp folder, removed when all passed)
#   TORCH_SPEC=...                       as in the Makefile (default: the torch wheels this machine keeps on disk)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1
unset TRANSFERLAB_CONF TRANSFERLAB_ROOT VIRTUAL_ENV PYTHONPATH   # nothing may point back into the checkout

keep=${WORK:+1}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/transferlab-wheel.XXXXXX")}
mkdir -p "$work"
work=$(cd "$work" && pwd)
case "$work/" in "$root"/*) echo "ci_wheel: WORK must be outside the checkout ($root)" >&2; exit 2 ;; esac
step() { echo "== ci_wheel: $*"; }
fail() { echo "ci_wheel: FAILED: $*" >&2; exit 1; }
trap 'status=$?; [[ $status == 0 ]] || echo "ci_wheel: FAILED (exit $status); everything is in $work" >&2' EXIT

# 1. A researcher's project: a git repository of its own (with a commit) holding conf/ and the ignored .venv.
project=$work/project
rm -rf "$project"
mkdir -p "$project/conf/experiment" "$project/conf/target"
cat >"$project/conf/target/digits_5to7.yaml" <<'EOF'
# @package target
defaults:
  - /task/digits@_here_
  - _self_
name: digits_5to7
classes: [5, 6, 7]
EOF
cat >"$project/conf/experiment/mine.yaml" <<'EOF'
# @package _global_
defaults:
  - override /target: digits_5to7
  - override /transfer: linear_probe
name: mine
hydra:
  sweep:
    dir: ${paths.root_dir}/outputs/sweeps/${name}
  sweeper:
    params:
      target.n_per_class: 2,3
EOF
printf '.venv/\noutputs/\n' >"$project/.gitignore"
git -C "$project" init -q
git -C "$project" add .
git -C "$project" -c user.name=ci -c user.email=ci@localhost commit -q -m "a researcher's project"

step "a fresh environment ($project/.venv)"
"$python" -m venv "$project/.venv"
bin=$project/.venv/bin
"$bin/python" -m pip install -q --upgrade pip

# 2. The wheel, built from a copy of the checkout's files (tracked and new, not ignored): nothing is written into
#    the checkout, and no stale build/ folder can add a file the tree no longer has. Installed with its
#    dependencies from the package index, torch first as the Makefile installs it.
step "building the wheel and installing it"
rm -rf "$work/tree" "$work/dist"
mkdir -p "$work/tree"
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -C "$work/tree" -xf -
"$bin/python" -m pip wheel -q --no-deps -w "$work/dist" "$work/tree"
wheel=$(ls "$work"/dist/transferlab-*.whl)
# shellcheck disable=SC2086 # TORCH_SPEC is a list of requirements
"$bin/python" -m pip install -q $torch_spec || "$bin/python" -m pip install -q torch torchvision
"$bin/python" -m pip install -q "$wheel"
"$bin/python" -m pip check
"$bin/python" - "$wheel" "$root" <<'EOF'
import subprocess, sys, zipfile
from importlib import metadata
wheel, root = sys.argv[1:]
conf = {f for f in subprocess.run(["git", "-C", root, "ls-files", "conf"], capture_output=True, text=True,
                                  check=True).stdout.split() if f.endswith(".yaml")}
shipped = {n.removeprefix("transferlab/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("transferlab/conf/")}
assert conf and conf <= shipped, f"conf files missing from the wheel: {sorted(conf - shipped)}"
import transferlab
assert "site-packages" in transferlab.__file__ and not transferlab.__file__.startswith(root), transferlab.__file__
print(f"wheel {metadata.version('transferlab')}: {len(conf)} conf files; transferlab imported from {transferlab.__file__}")
EOF

# 3. From the project folder, as its user would.
cd "$project"
tiny=(pretrain.max_epochs=1 train.max_epochs=1 trainer.enable_progress_bar=false)
check() { "$bin/python" - "$@" <<'EOF'
import csv, json, sys
from pathlib import Path
what, folder, expect = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
records = [json.loads(p.read_text()) for p in sorted(folder.rglob("result.json"))]
assert len(records) == expect, f"{folder}: {len(records)} result.json, expected {expect}"
bad = [(r["status"], r.get("error")) for r in records if r["status"] != "ok"]
assert not bad, f"{folder}: {bad}"
for r in records:
    env = r["environment"]
    # installed from the wheel inside another repository: no commit of that repository is claimed as ours
    assert env["transferlab"] and env["commit"] is None and env["dirty"] is None, env
    assert 0 <= r["metrics"]["test/acc"] <= 1, r["metrics"]
if what == "mine":
    assert {(r["target"], r["transfer"], r["num_classes"]) for r in records} == {("digits_5to7", "linear_probe", 3)}
    assert sorted(r["n_per_class"] for r in records) == [2, 3]
if what == "report":
    for name in ("results.csv", "summary.csv", "curves.csv", "report.html", "tables/summary.md"):
        assert (folder / name).stat().st_size > 0, name
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == expect and {r["status"] for r in rows} == {"ok"}, rows
    assert "<img" in (folder / "report.html").read_text()
print(f"ok: {what}: {len(records)} result.json in {folder}")
EOF
}
summary() { grep -q "^sweep $1: 2 ok, 0 failed, 0 skipped" "$2" || fail "no '2 ok' summary line for sweep $1 in $2"; }

step "transferlab-train (the default experiment)"
"$bin/transferlab-train" "${tiny[@]}" </dev/null | tee "$work/train.log"
check default outputs/runs/default 1

step "transferlab-train -m (a 2-point sweep), transferlab-status, transferlab-report"
"$bin/transferlab-train" -m name=wheel_sweep target.n_per_class=2,3 'hydra.sweep.dir=outputs/sweeps/${name}' \
  "${tiny[@]}" </dev/null | tee "$work/sweep.log"
summary wheel_sweep "$work/sweep.log"
"$bin/transferlab-status" outputs/sweeps/wheel_sweep </dev/null
"$bin/transferlab-report" outputs/sweeps/wheel_sweep </dev/null
check report outputs/sweeps/wheel_sweep 2

step "transferlab-train --config-dir conf -m experiment=mine (the project's own preset)"
"$bin/transferlab-train" --config-dir conf -m experiment=mine "${tiny[@]}" </dev/null | tee "$work/mine.log"
summary mine "$work/mine.log"
check mine outputs/sweeps/mine 2

step "transferlab-score --json"
"$bin/transferlab-score" --json target.n_per_class=5 'transfer.scores=[logme]' pretrain.max_epochs=1 </dev/null \
  >"$work/score.json"
"$bin/python" - "$work/score.json" <<'EOF'
import json, math, sys
(arm,) = [a for g in json.load(open(sys.argv[1]))["groups"] for a in g["arms"]]
assert arm["source_cache"] == "hit" and math.isfinite(arm["scores"]["logme"]), arm
print(f"ok: score: logme {arm['scores']['logme']:.3f} (the sweep's source model, from the cache)")
EOF

example=$root/examples/own_project/run_example.sh
if [[ -f $example ]]; then
  step "examples/own_project/run_example.sh with $bin first on PATH"
  mkdir -p "$work/example" && cd "$work/example"
  PATH="$bin:$PATH" bash "$example" </dev/null || fail "examples/own_project/run_example.sh"
else
  step "no examples/own_project/run_example.sh in this checkout: skipped"
fi

step "all passed"
cd /
[[ -n $keep ]] || rm -rf "$work"

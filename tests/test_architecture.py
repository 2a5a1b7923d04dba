"""The layering docs/architecture.md states, held by tools rather than by review.

- `lint-imports` (import-linter; its contracts are in pyproject.toml): a stage imports only earlier stages, and
  `scores/` nothing of transferlab.
- The modules the sweeper, `transferlab-status` and the report load at start stay torch-free: a sweep of a
  thousand points is judged, and a report drawn, without importing torch (a runtime fact, since lazy imports
  inside functions are how those modules reach torch-using code when they need it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = ("transferlab.sweep.ledger", "transferlab.sweep.state", "transferlab.sweep.progress", "transferlab.sweep.groups",
              "transferlab.sweep.points", "transferlab.sweep.preview", "transferlab.run.identity",
              "transferlab.run.record", "transferlab.report", "transferlab.status", "transferlab.plan_seeds",
              "transferlab.cache", "hydra_plugins.transferlab_plugins.sweeper")


def test_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        exe = shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency (pyproject [dev]); `make install` installs it"
    out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module", TORCH_FREE)
def test_sweeper_status_and_report_modules_import_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()} when loaded"

"""What the wheel declares: every distribution the code imports is a dependency in pyproject.toml (an installed wheel
gets nothing else). The wheel itself, built and installed outside the checkout, is scripts/ci_wheel.sh's job."""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib import metadata

import pytest

from conftest import ROOT

FIRST_PARTY = {"transferlab", "hydra_plugins.transferlab_plugins"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    """Every absolute import in src/, as `top` (or `hydra_plugins.<plugin>`: that namespace is shared by several
    distributions)."""
    found = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                parts = name.split(".")
                found.add(".".join(parts[:2]) if parts[0] == "hydra_plugins" and len(parts) > 1 else parts[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in FIRST_PARTY}


@cache
def _by_module() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distribution(module: str) -> str:
    top = module.split(".")[0]
    candidates = _by_module().get(top, [])
    if "." in module:  # a namespace package: the distribution that holds this part of it
        path = module.replace(".", "/") + "/"
        candidates = [d for d in candidates if any(str(f).startswith(path) for f in metadata.files(d) or [])]
    candidates = [d for d in candidates if _canonical(d) != "transferlab"]
    assert len(set(candidates)) == 1, f"{module}: installed by {candidates or 'nothing'}"
    return _canonical(candidates[0])


def test_every_imported_distribution_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the dependencies, and the optional extras other than dev (a feature that imports its package only when used,
    # e.g. wandb-workspaces for `transferlab-report --wandb-workspace`, which says how to install it when missing)
    extras = [r for name, reqs in project.get("optional-dependencies", {}).items() if name != "dev" for r in reqs]
    declared = {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in [*project["dependencies"], *extras]}
    imported = {m: _distribution(m) for m in sorted(_imported_modules())}
    assert {"torch", "pillow", "hydra-submitit-launcher"} <= set(imported.values())  # the scan sees them
    missing = {m: d for m, d in imported.items() if d not in declared}
    assert not missing, f"imported but not in [project].dependencies: {missing}"

"""What made a result: the versions of Python, of the libraries that compute it and of transferlab itself (version,
git commit, dirty). Recorded in every result.json; not identity (`run/identity.py`): a library upgrade does not void
finished runs, but the report says when one arm mixes versions. Caches are stricter, since their entries are reused
without a word: the feature cache and the source-model cache key on the versions that make their entries
(`run/identity.SOURCE_MADE_BY`). A shared piece like
`errors.py`: every stage may import it, it imports nothing of transferlab."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def library_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


LIBRARIES = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "numpy", "scikit-learn", "hydra-core",
             "omegaconf", "pandas", "scipy")
_environment: dict[str, Any] | None = None


def versions_of(names: tuple[str, ...]) -> dict[str, str | None]:
    """This process's versions of `names` (keys of `environment()`)."""
    env = environment()
    return {name: env.get(name) for name in names}


def environment() -> dict[str, Any]:
    """This process's versions (read once): Python, `LIBRARIES`, transferlab, and the git commit of the checkout
    it runs from with whether the package's files differ from it (None for both when not run from a checkout)."""
    global _environment
    if _environment is None:
        import platform
        import subprocess

        env: dict[str, Any] = {"python": platform.python_version(), "transferlab": library_version("transferlab")}
        env.update({lib: library_version(lib) for lib in LIBRARIES})
        package = Path(__file__).resolve().parent  # src/transferlab in a checkout, else an installed copy
        env["commit"], env["dirty"] = None, None

        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10)

        try:
            # Only a checkout of transferlab has a commit: an installed wheel inside some other repository (a
            # project's .venv) is not a file git tracks, and that repository's HEAD says nothing about this code.
            if git("ls-files", "--error-unmatch", "--", "__init__.py").returncode == 0:
                commit = git("rev-parse", "HEAD")
                dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(package))
                env["commit"] = (commit.stdout.strip() or None) if commit.returncode == 0 else None
                env["dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            env["commit"], env["dirty"] = None, None
        _environment = env
    return dict(_environment)

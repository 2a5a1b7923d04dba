"""A researcher's own code named by a `_target_` (a backbone or a task): where it lives, and calling it.

`backbone=custom backbone._target_=mypkg.nets.MyNet` and `target=custom target._target_=mypkg.data.load` name a
class or function by its import path, as Hydra's `instantiate` does; this module is the one place that finds and
calls such a path, so backbones and tasks fail the same way: one ConfigError line naming the key, the path and
why (not importable, not callable, or what calling it raised), before anything is written.

Its *code* is part of a run's identity, like a data file's bytes (run/identity.py): `code_digest` hashes the
module the path names (`mypkg/nets.py` for `mypkg.nets.MyNet`), or every `.py` file of the package when the path
names a package's attribute (`mypkg.MyNet` -> `mypkg/`). It is found as the import system would find it (an
editable install's finder included) without running it (the sweeper fingerprints every point before launching,
torch-free), so editing the class re-runs its points and retrains the source models built with it. A `_target_`
node inside its kwargs (`nested_targets`) is hashed the same way. Code it imports from elsewhere is not followed:
keep a component's code in the module or package its `_target_` names.
"""

from __future__ import annotations

import functools
import inspect
import sys
from importlib import import_module
from importlib.machinery import PathFinder
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Mapping

from transferlab.errors import ConfigError, Problem, problem
from transferlab.store import content

UNSET = "???"  # OmegaConf's MISSING, as a plain config shows it
# Packages whose targets are library code, identified by the library versions recorded with every result, not
# hashed (hashing `torch.nn` would read a whole package tree on every fingerprint).
LIBRARY_PACKAGES = ("torch", "torchvision", "timm")


def is_set(target: Any) -> bool:
    return isinstance(target, str) and bool(target.strip()) and target != UNSET


def code_path(target: str) -> Path | None:
    """The file of the deepest module in `target` (`mypkg.nets.MyNet` -> .../mypkg/nets.py), or the folder of a
    package when that module is a package (`mypkg.MyNet` -> .../mypkg); None when no module of it is found."""
    if not is_set(target):
        return None
    parts = target.split(".")
    found: Path | None = None
    search: list[str] | None = None  # None: sys.path
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        origin = getattr(loaded, "__file__", None) if loaded is not None else None
        locations = list(getattr(loaded, "__path__", []) or []) if loaded is not None else None
        if loaded is None or (origin is None and not locations):
            try:  # a top-level name through every finder (an editable install's own finder too), which runs
                #    nothing; a submodule by path, inside its package's folders, so its package is not run either
                spec = find_spec(name) if search is None else PathFinder.find_spec(name, search)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                break
            origin = spec.origin if spec.has_location else None
            locations = list(spec.submodule_search_locations or [])
        if locations:  # a package: its folder, and its submodules are searched there
            found, search = Path(locations[0]), locations
        elif origin:
            found = Path(origin)
            break  # a plain module: what follows are its attributes
        else:
            break
    return found


def is_library(target: str) -> bool:
    return target.split(".", 1)[0] in LIBRARY_PACKAGES


def nested_targets(value: Any, prefix: str) -> list[tuple[str, str]]:
    """(key, target) of every `_target_` node inside `value` (a component's kwargs: Hydra's `instantiate` builds
    them too), outside the libraries: their code shapes the component as its own does, so it is hashed with it."""
    out: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        t = value.get("_target_")
        if is_set(t) and not is_library(str(t)):
            out.append((prefix, str(t)))
        for k, v in value.items():
            if k != "_target_":
                out += nested_targets(v, f"{prefix}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out += nested_targets(v, f"{prefix}.{i}")
    return out


def named_parameters(target: Any) -> set[str] | None:
    """The parameters a function (or a class's `__init__`) named by `target` declares by name, read from its
    module's source without running it (the sweeper is torch-free and runs nothing of yours); None when that
    cannot be told (not found, not defined in the module `code_path` finds, or defined by other means)."""
    path = code_path(target) if is_set(target) else None
    if path is None or path.is_dir():
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    found = _declared(str(path), (stat.st_mtime_ns, stat.st_size), str(target).rsplit(".", 1)[-1])
    return None if found is None else set(found)


@functools.lru_cache(maxsize=64)
def _declared(path: str, stamp: tuple[int, int], name: str) -> frozenset[str] | None:
    """`named_parameters` of `name` in the module file at `path`, parsed once per version of the file (`stamp`:
    its modification time and size), not once per sweep point."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if node is None:
                return None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            a = node.args
            return frozenset(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])
    return None


def unlisted_data(target: Any, key: str, data_dir: Any) -> Problem:
    """The problem of a task loader that takes `data_dir` and lists no `<key>.files` (tasks/custom.py): what it
    reads there would not be in the run's identity."""
    return problem(f"{key}.files", [], f"the files or folders {target} reads (it takes data_dir), e.g. "
                                       f"{key}.files=['{data_dir or '<data_dir>'}/<its data>']: their bytes are in "
                                       "the run's identity, so a run is not reused after its data changed")


def code_digest(target: Any) -> str:
    """sha256 of the code `target` names (`code_path`: a module file, or a package's `.py` files); "missing" when
    it cannot be found (setup then reports why it cannot be imported)."""
    path = code_path(target) if is_set(target) else None
    if path is None:
        return content.MISSING
    return content.tree_digest(path, (".py",))


def locate(target: Any, key: str) -> Callable[..., Any]:
    """The callable `target` names, imported; a ConfigError on `key` otherwise."""
    if not is_set(target):
        raise ConfigError(problem(key, target, "the import path of your class or function, e.g. mypkg.nets.MyNet "
                                              "(importable: installed, or its folder on PYTHONPATH)"))
    try:
        obj = resolve(str(target))
    except Exception as e:  # noqa: BLE001 - not found, or the module's own code failed: its error, one line
        raise ConfigError(problem(key, target, f"an importable class or function (installed, or its folder on "
                                               f"PYTHONPATH); {type(e).__name__}: {_one_line(e)}")) from None
    if not callable(obj):
        raise ConfigError(problem(key, target, f"a class or function; it names a {type(obj).__name__}"))
    return obj


def resolve(target: str) -> Any:
    """What a dotted path names: its first part imported, then each next part an attribute or, failing that, a
    submodule (what Hydra's `_target_` resolution does, without its log line). A module that exists but fails to
    import raises its own error."""
    parts = target.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ValueError(f"{target!r} is not a dotted import path")
    obj = import_module(parts[0])
    for i in range(1, len(parts)):
        try:
            obj = getattr(obj, parts[i])
        except AttributeError:
            try:
                obj = import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError as e:
                if e.name != ".".join(parts[: i + 1]):
                    raise  # the module exists; something it imports does not
                raise ModuleNotFoundError(f"{'.'.join(parts[:i])} has no attribute or submodule {parts[i]!r}",
                                          name=e.name) from None
    return obj


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Does `fn` take a keyword argument `name` (by name, or through **kwargs)?"""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): offer nothing
        return False
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.kind == p.VAR_KEYWORD
               for p in params)


def call(target: Any, kwargs: Mapping[str, Any] | None, key: str, **offered: Any) -> Any:
    """`target(**kwargs, **offered)` through Hydra's `instantiate` (nested `_target_` nodes in kwargs are built
    too); each `offered` argument (the input shape, the data folder) is passed only when the callable takes it.
    Whatever the call raises is a ConfigError on `key` with the error's type and message."""
    fn = locate(target, key)
    from hydra.utils import instantiate

    extra = {k: v for k, v in offered.items() if accepts(fn, k)}
    node = {"_target_": str(target), **dict(kwargs or {})}
    try:
        return instantiate(node, _convert_="all", **extra)
    except Exception as e:  # noqa: BLE001 - the user's code: its error, one line, nothing written
        cause = e.__cause__ or e
        shown = ", ".join(f"{k}={v!r}" for k, v in {**dict(kwargs or {}), **extra}.items())
        raise ConfigError(problem(key, target, f"a call that works: {target}({shown}) raised "
                                               f"{type(cause).__name__}: {_one_line(cause)}")) from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or "(no message)"

"""The one place transferlab touches private internals of Lightning, Hydra and hydra-submitit-launcher.

Each wrapper below names the library versions it was written against and why the public API does not suffice, and
checks the internal it relies on (an attribute, its signature, its qualified name) at first use: when an upgrade
changed it, the wrapper raises `RuntimeError("transferlab.compat: <library> <version>: <what> changed; ...")`
instead of silently doing something else. tests/test_compat.py exercises each assumption against the installed
libraries, so an upgrade that breaks one fails there first. Call sites use these wrappers, never the internals.

Written against lightning 2.6 and hydra-core 1.3 (tested with lightning 2.6.6 and hydra-core 1.3.8). A shared piece
like `errors.py`: every stage may import it, it imports nothing of transferlab but `versions`, and no framework at
import time (each wrapper imports its library when first called).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

from transferlab.versions import library_version

FIX = "check the wrapper in transferlab/compat.py against this version, or install the version it names"


def changed(library: str, what: str) -> RuntimeError:
    """The error for a private internal that is not what a wrapper was written against."""
    return RuntimeError(f"transferlab.compat: {library} {library_version(library)}: {what} changed; {FIX}")


def _params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


_checked: set[str] = set()


def _check_once(name: str, check: Callable[[], None]) -> None:
    if name not in _checked:
        check()
        _checked.add(name)


# ---------------------------------------------------------------------------------------------------- Hydra


def _config_loader_impl() -> Any:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    def check() -> None:
        apply = ConfigLoaderImpl.__dict__.get("_apply_overrides_to_config")
        if not isinstance(apply, staticmethod) or _params(apply.__func__) != ["overrides", "cfg"]:
            raise changed("hydra-core", "ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)")
        if _params(get_overrides_dirname) != ["overrides", "exclude_keys", "item_sep", "kv_sep"]:
            raise changed("hydra-core", "config_loader_impl.get_overrides_dirname(overrides, exclude_keys, "
                                        "item_sep, kv_sep)")

    _check_once("config_loader_impl", check)
    return ConfigLoaderImpl, get_overrides_dirname


def apply_overrides(cfg: Any, overrides: Sequence[Any]) -> None:
    """Apply parsed value overrides (Hydra `Override`s, no config groups) to a composed config in place, exactly as
    Hydra does after composing (struct mode: an unknown key fails with Hydra's own message).

    Why private: Hydra applies them in `ConfigLoaderImpl._apply_overrides_to_config` and has no public API for it;
    the sweeper composes once per set of group choices and applies each point's values to a copy, which only
    matches a full compose when it is Hydra's own code doing it (hydra-core 1.3)."""
    loader, _ = _config_loader_impl()
    loader._apply_overrides_to_config(list(overrides), cfg)


def overrides_dirname(overrides: Sequence[Any], kv_sep: str, item_sep: str, exclude_keys: Sequence[str]) -> str:
    """`hydra.job.override_dirname` for these parsed overrides, as Hydra builds it (hydra-core 1.3,
    `config_loader_impl.get_overrides_dirname`, not exported): the sweeper rebuilds it for a job it composes from
    a copy instead of in full."""
    _, dirname = _config_loader_impl()
    return dirname(overrides=list(overrides), kv_sep=kv_sep, item_sep=item_sep, exclude_keys=list(exclude_keys))


def hydra_run_and_report(fn: Callable[[], Any]) -> Any:
    """Run `fn` under Hydra's own error reporter (`hydra._internal.utils.run_and_report`, hydra-core 1.3): an
    exception is printed as Hydra prints it (short, or in full with HYDRA_FULL_ERROR=1) and ends in SystemExit(1).
    Why private: the CLI reports a composition failure it caught itself the way Hydra would have, and Hydra keeps
    that reporter internal."""
    from hydra._internal import utils

    def check() -> None:
        run = getattr(utils, "run_and_report", None)
        if run is None or _params(run) != ["func"]:
            raise changed("hydra-core", "hydra._internal.utils.run_and_report(func)")

    _check_once("run_and_report", check)
    return utils.run_and_report(fn)


def _job_return() -> Any:
    from hydra.core.utils import JobReturn

    def check() -> None:
        if "_return_value" not in {f.name for f in dataclasses.fields(JobReturn)}:
            raise changed("hydra-core", "JobReturn._return_value (a failed job's exception)")

    _check_once("job_return", check)
    return JobReturn


def job_exception(ret: Any) -> Any:
    """A failed job's exception, read without raising it. Why private: Hydra's public `JobReturn.return_value`
    re-raises it (and writes to stderr); it is held in the dataclass field `_return_value` (hydra-core 1.3)."""
    _job_return()
    return ret._return_value


def job_return(status: Any, working_dir: str, error: BaseException | None) -> Any:
    """A `JobReturn` with this status and, for a failed job, its exception in `_return_value` where Hydra's own
    launchers put it (hydra-core 1.3): the pull launcher reports runs other processes did this way."""
    ret = _job_return()(status=status, working_dir=working_dir)
    ret._return_value = error
    return ret


def basic_sweeper() -> type:
    """Hydra's basic sweeper class, which `hydra/sweeper=transferlab` extends (hydra-core 1.3,
    `hydra._internal.core_plugins.basic_sweeper`; Hydra exports no base sweeper with its batching and
    `params`). Relied on: `__init__(max_batch_size, params)` and `setup` setting `config`, `launcher` and
    `hydra_context`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    def check() -> None:
        if _params(BasicSweeper.__init__)[:3] != ["self", "max_batch_size", "params"]:
            raise changed("hydra-core", "BasicSweeper.__init__(max_batch_size, params)")

    _check_once("basic_sweeper", check)
    return BasicSweeper


def is_basic_launcher(launcher: Any) -> bool:
    """Is this Hydra's in-process basic launcher (hydra-core 1.3, `hydra._internal.core_plugins.basic_launcher`)?
    Only then may the sweeper swap `launcher.hydra_context.config_loader` for a launch: that launcher reads it for
    each job in this process, where other launchers pickle the context away."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    def check() -> None:
        if "hydra_context" not in _params(BasicLauncher.setup):
            raise changed("hydra-core", "BasicLauncher.setup(hydra_context, ...)")
        try:
            source = inspect.getsource(BasicLauncher.launch)
        except (OSError, TypeError):  # installed without sources: the signature check above is all there is
            return
        if "self.hydra_context.config_loader.load_sweep_config" not in source:
            raise changed("hydra-core", "BasicLauncher.launch composing each job with hydra_context.config_loader")

    _check_once("basic_launcher", check)
    return type(launcher) is BasicLauncher


def submitit_launch(launch: Callable[[], Any], results: Callable[..., Any], map_array: Callable[..., Any]) -> Any:
    """`launch()` (hydra-submitit-launcher 1.2's `BaseSubmititLauncher.launch`, called by the SLURM launcher that
    extends it) with submitit's `Job.results` and `AutoExecutor.map_array` replaced for its duration:
    `results(original, job)` where it waits on each job (the tolerant launcher turns a killed job into a FAILED
    return instead of abandoning the array) and `map_array(original, executor, fn, *iterables)` where it submits
    (several arrays within the cluster's MaxArraySize). Why private: `launch` builds its executor and waits on its
    jobs inside itself, with no hook for either. Relied on: it submits with `executor.map_array(` and waits with
    `.results()`."""
    from unittest import mock

    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    from submitit.core.core import Job

    def check() -> None:
        try:
            source = inspect.getsource(BaseSubmititLauncher.launch)
        except (OSError, TypeError):  # installed without sources: nothing to check
            return
        if "executor.map_array(" not in source or ".results()" not in source:
            raise changed("hydra-submitit-launcher", "BaseSubmititLauncher.launch submitting with executor.map_array "
                                                     "and waiting with Job.results")

    _check_once("submitit_launch", check)
    own_results, own_map_array = Job.results, submitit.AutoExecutor.map_array
    with mock.patch.object(Job, "results", lambda job: results(own_results, job)), \
            mock.patch.object(submitit.AutoExecutor, "map_array",
                              lambda executor, fn, *iterables: map_array(own_map_array, executor, fn, *iterables)):
        return launch()


# ---------------------------------------------------------------------------------------------------- Lightning


def overrides_private(*names: str) -> Callable[[type], type]:
    """Class decorator for a subclass of a Lightning class that overrides its private methods `names` (e.g.
    `ModelCheckpoint._update_best_and_save`): a base without one of them no longer calls our override, and the
    subclass would silently do nothing; this raises at import instead (lightning 2.6)."""

    def check(cls: type) -> type:
        for name in names:
            base = next((b for b in cls.__mro__[1:] if name in b.__dict__), None)
            if base is None or not callable(base.__dict__[name]):
                raise changed("lightning", f"{cls.__mro__[1].__name__}.{name} (overridden by {cls.__name__})")
        return cls

    return check


def checkpoint_contents(trainer: Any, weights_only: bool) -> dict[str, Any]:
    """What `trainer.save_checkpoint(path, weights_only)` would write, as a dict, without writing it (lightning 2.6:
    `trainer._checkpoint_connector.dump_checkpoint(weights_only)`, which `save_checkpoint` calls before handing the
    dict to the strategy). Why private: Lightning has no public call that builds a checkpoint without saving it,
    and the model-selection tracker keeps the selected model's checkpoint in memory until it writes it
    (`training.callbacks.RunLocalCheckpoint`)."""
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    def check() -> None:
        dump = getattr(_CheckpointConnector, "dump_checkpoint", None)
        if dump is None or _params(dump) != ["self", "weights_only"]:
            raise changed("lightning", "_CheckpointConnector.dump_checkpoint(weights_only)")

    _check_once("dump_checkpoint", check)
    connector = getattr(trainer, "_checkpoint_connector", None)
    if not isinstance(connector, _CheckpointConnector):
        raise changed("lightning", "Trainer._checkpoint_connector")
    return connector.dump_checkpoint(weights_only)


def _on(value: Any, device: Any) -> bool | None:
    """Is every tensor in `value` (dicts, lists, tuples, sets, dataclasses, walked) already on `device`?
    None when it holds something `_ResultMetric.to` would move otherwise (a torchmetrics Metric)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.device == device
    if isinstance(value, torch.nn.Module):
        return None  # a torchmetrics Metric (a module): leave it to Lightning
    if isinstance(value, dict):
        value = value.values()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = vars(value).values()
    elif not isinstance(value, (list, tuple, set, frozenset)):
        return True
    for v in value:
        ok = _on(v, device)
        if not ok:
            return ok
    return True


def result_metric_to() -> Callable:
    """Lightning's own `_ResultMetric.to` (lightning 2.6, `trainer.connectors.logger_connector.result`), or a
    RuntimeError when it is not the method `patch_result_metric_to` was written against."""
    from lightning.pytorch.trainer.connectors.logger_connector import result

    cls = getattr(result, "_ResultMetric", None)
    original = None if cls is None else cls.__dict__.get("to")
    original = getattr(original, "__wrapped__", original) if getattr(original, "_transferlab_fast", False) \
        else original
    if original is None or original.__qualname__ != "_ResultMetric.to":
        raise changed("lightning", "logger_connector.result._ResultMetric.to")
    return original


def patch_result_metric_to() -> None:
    """Make `self.log`'s per-call device move a no-op when the logged metric's state is already on the device.

    Every `LightningModule.log` call runs `_ResultMetric.to(value.device)`, which rebuilds the metric's whole
    `__dict__` through `apply_to_collection` (deep-copying its metadata dataclass) even when nothing moves: most of
    the cost of the four epoch-level `self.log` calls a tiny epoch makes (docs/speed.md). Moving a tensor to the
    device it is on returns the tensor itself, so skipping the rebuild then changes nothing; any other case (a
    tensor elsewhere, a torchmetrics Metric inside, other `to` arguments) still goes through Lightning's own `to`.
    Installed once per process, and only over the method this was written against: on a Lightning whose
    `_ResultMetric.to` differs it installs nothing (a speed-up, never a reason to stop a run;
    tests/test_compat.py fails instead)."""
    import torch
    from lightning.pytorch.trainer.connectors.logger_connector import result

    cls = getattr(result, "_ResultMetric", None)
    if cls is None or getattr(cls.__dict__.get("to"), "_transferlab_fast", False):
        return
    try:
        original = result_metric_to()
    except RuntimeError:
        return

    def to(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.device):
            if all(_on(v, args[0]) for v in self.__dict__.values()):
                return self
        return original(self, *args, **kwargs)

    to._transferlab_fast = True
    to.__wrapped__ = original
    cls.to = to

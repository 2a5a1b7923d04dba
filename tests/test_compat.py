"""`transferlab.compat` against the installed Lightning and Hydra: one test per private internal it wraps, on the
real library, checking the assumption the wrapper relies on (an upgrade that changes one fails here), and the clear
error a changed internal gives instead of a silent misbehaviour."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from lightning.pytorch.trainer.connectors.logger_connector import result as lresult
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict, read_write

from transferlab import compat
from transferlab.versions import library_version


@pytest.fixture
def hydra_conf(tmp_path):
    """A tiny config folder, Hydra initialised on it (the real ConfigLoaderImpl)."""
    from hydra import initialize_config_dir

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text("a: 1\nb:\n  c: x\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        yield tmp_path


def _compose(*overrides: str, hydra: bool = False):
    from hydra import compose

    return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_apply_overrides_is_what_a_compose_with_them_gives(hydra_conf):
    values = ["a=2", "b.c=y", "+b.d=[1,2]", "~a"]
    for n in range(1, len(values) + 1):
        cfg = _compose()
        with read_write(cfg):
            compat.apply_overrides(cfg, OverridesParser.create().parse_overrides(values[:n]))
        assert cfg == _compose(*values[:n]), values[:n]
    cfg = _compose()
    with pytest.raises(ConfigCompositionException, match="Could not override 'nope'"):  # struct: Hydra's message
        compat.apply_overrides(cfg, OverridesParser.create().parse_overrides(["nope=1"]))


def test_overrides_dirname_is_hydras_own(hydra_conf):
    full = _compose("a=2", "b.c=y", hydra=True)
    names = full.hydra.job.config.override_dirname
    parsed = OverridesParser.create().parse_overrides(["a=2", "b.c=y"])
    assert compat.overrides_dirname(parsed, kv_sep=names.kv_sep, item_sep=names.item_sep,
                                    exclude_keys=names.exclude_keys) == full.hydra.job.override_dirname == "a=2,b.c=y"


def test_hydra_run_and_report_prints_hydras_report_and_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert compat.hydra_run_and_report(lambda: 7) == 7

    def fails():
        raise ValueError("the value is bad")

    with pytest.raises(SystemExit) as exit_:
        compat.hydra_run_and_report(fails)
    assert exit_.value.code == 1
    assert "ValueError: the value is bad" in capsys.readouterr().err


class _CountingLoader:
    """The real config loader, counting the per-job composes the launcher asks it for."""

    def __init__(self, loader):
        self.loader, self.composed = loader, []

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config, overrides):
        self.composed.append(list(overrides))
        return self.loader.load_sweep_config(master_config, overrides)


def _task(cfg):
    if cfg.a == 2:
        raise ValueError("a=2 fails")
    return cfg.a


def test_basic_launcher_composes_each_job_with_the_contexts_loader_and_a_failed_job_keeps_its_exception(hydra_conf):
    """What the sweeper relies on: the in-process launcher reads `hydra_context.config_loader` for each job (so a
    loader swapped in for one launch is used), and a failed job's `JobReturn` holds its exception."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobReturn
    from hydra.types import HydraContext

    master = _compose(hydra=True)
    with read_write(master), open_dict(master):
        master.hydra.sweep.dir = str(hydra_conf / "multirun")
    loader = _CountingLoader(GlobalHydra.instance().config_loader())
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))  # as Hydra builds it (no callbacks)
    basic = BasicLauncher()
    assert compat.is_basic_launcher(basic) and not compat.is_basic_launcher(type("Other", (BasicLauncher,), {})())
    basic.setup(hydra_context=context, task_function=_task, config=master)
    ok, failed = basic.launch([["a=3", "hydra.sweep.subdir=p0"], ["a=2", "hydra.sweep.subdir=p1"]], 0)
    assert loader.composed == [["a=3", "hydra.sweep.subdir=p0"], ["a=2", "hydra.sweep.subdir=p1"]]
    assert ok.status == JobStatus.COMPLETED and ok.return_value == 3 and compat.job_exception(ok) == 3
    assert failed.status == JobStatus.FAILED
    exc = compat.job_exception(failed)
    assert isinstance(exc, ValueError) and str(exc) == "a=2 fails"
    made = compat.job_return(JobStatus.FAILED, str(hydra_conf), RuntimeError("lost"))
    assert isinstance(made, JobReturn) and str(compat.job_exception(made)) == "lost"
    with pytest.raises(RuntimeError, match="lost"):  # Hydra's public accessor sees the same exception
        made.return_value  # noqa: B018


def test_result_metric_fast_path_wraps_lightnings_own_to_and_engages():
    original = compat.result_metric_to()
    assert original.__qualname__ == "_ResultMetric.to" and original.__module__ == lresult.__name__
    # Lightning moves each logged value's metric with `.to(value.device)`: what the fast path short-cuts
    assert "self[key].to(value.device)" in inspect.getsource(lresult._ResultCollection.log)
    compat.patch_result_metric_to()
    compat.patch_result_metric_to()  # installed once
    to = lresult._ResultMetric.to
    assert to._transferlab_fast and to.__wrapped__ is original
    results = lresult._ResultCollection(training=True)
    results.log("on_train_epoch_end", "train/loss", torch.tensor(2.0), on_step=False, on_epoch=True)
    metric = results["on_train_epoch_end.train/loss"]
    meta = metric.meta
    assert metric.to(torch.device("cpu")) is metric and metric.meta is meta  # the fast path: nothing rebuilt
    assert metric.to(torch.float64) is metric and metric.meta is not meta  # anything else: Lightning's own


def test_private_lightning_methods_we_override_are_still_called_by_lightning():
    from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
    from lightning.pytorch.utilities.model_summary.model_summary import ModelSummary as Summary

    from transferlab.training.callbacks import BlockModelSummary, RunLocalCheckpoint, _BlockSummary

    for ours, base, name in [(RunLocalCheckpoint, ModelCheckpoint, "_update_best_and_save"),
                             (RunLocalCheckpoint, ModelCheckpoint, "_save_checkpoint"),
                             (_BlockSummary, Summary, "_get_summary_data"),
                             (BlockModelSummary, ModelSummary, "_summary")]:
        assert issubclass(ours, base) and name in ours.__dict__ and callable(base.__dict__.get(name)), name
        assert f"self.{name}(" in inspect.getsource(base), f"{base.__name__} no longer calls {name}"


def test_a_changed_internal_is_one_clear_error(hydra_conf, monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    hydra = library_version("hydra-core")
    cfg = _compose()
    monkeypatch.setattr(compat, "_checked", set())
    monkeypatch.delattr(ConfigLoaderImpl, "_apply_overrides_to_config")
    with pytest.raises(RuntimeError, match=rf"^transferlab\.compat: hydra-core {hydra}: ConfigLoaderImpl\."
                                           r"_apply_overrides_to_config\(overrides, cfg\) changed; check"):
        compat.apply_overrides(cfg, OverridesParser.create().parse_overrides(["a=2"]))
    assert cfg.a == 1

    monkeypatch.setattr(compat, "_checked", set())
    monkeypatch.setattr("hydra._internal.utils.run_and_report", lambda func, verbose: func())
    with pytest.raises(RuntimeError, match=r"hydra-core .*: hydra\._internal\.utils\.run_and_report\(func\) changed"):
        compat.hydra_run_and_report(lambda: 1)

    class Base:
        def _renamed(self):
            pass

    with pytest.raises(RuntimeError, match=r"lightning .*: Base\._update_best_and_save \(overridden by Ours\) "
                                           "changed"):
        @compat.overrides_private("_update_best_and_save")
        class Ours(Base):
            def _update_best_and_save(self):
                pass

    def to(self, *args, **kwargs):  # a Lightning whose `to` is another method: not ours to wrap
        return self

    monkeypatch.setattr(lresult._ResultMetric, "to", to)
    with pytest.raises(RuntimeError, match=r"lightning .*: logger_connector\.result\._ResultMetric\.to changed"):
        compat.result_metric_to()
    compat.patch_result_metric_to()  # a speed-up only: installs nothing, the run goes on
    assert lresult._ResultMetric.to is to


def test_compat_imports_no_framework():
    """Cheap to import everywhere (the CLI's start-up): each wrapper imports its library when first called."""
    import subprocess
    import sys

    code = ("import sys, transferlab.compat; "
            "print(sorted(m for m in ('torch', 'lightning', 'hydra', 'omegaconf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"


def test_the_sweeper_base_is_hydras_basic_sweeper():
    from hydra_plugins.transferlab_plugins.sweeper import TransferlabSweeper

    base = compat.basic_sweeper()
    assert (base.__module__, base.__name__) == ("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper")
    assert TransferlabSweeper.__mro__[1] is base
    sweeper = TransferlabSweeper(max_batch_size=3, params={"a": "1,2"})
    assert (sweeper.max_batch_size, dict(sweeper.params)) == (3, {"a": "1,2"})  # what __init__ passes on


def test_checkpoint_contents_is_what_save_checkpoint_writes(tmp_path, monkeypatch):
    """`compat.checkpoint_contents` (the tracker's in-memory best.ckpt) is the dict Lightning's own
    `trainer.save_checkpoint(weights_only=True)` hands to the checkpoint IO, and a changed internal is one error."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    saved = {}
    monkeypatch.setattr(trainer.strategy.checkpoint_io, "save_checkpoint",
                        lambda checkpoint, path, storage_options=None: saved.update(checkpoint))
    trainer.save_checkpoint(tmp_path / "x.ckpt", weights_only=True)
    ours = compat.checkpoint_contents(trainer, True)
    assert ours.keys() == saved.keys() and ours["epoch"] == saved["epoch"] and ours["loops"] == saved["loops"]
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in saved["state_dict"].items())

    monkeypatch.setattr(compat, "_checked", set())
    monkeypatch.setattr(_CheckpointConnector, "dump_checkpoint", lambda self: {})
    with pytest.raises(RuntimeError, match=r"lightning .*: _CheckpointConnector\.dump_checkpoint\(weights_only\) "
                                           "changed"):
        compat.checkpoint_contents(trainer, True)


def test_submitit_launch_replaces_results_and_map_array_only_while_the_stock_launch_runs(monkeypatch):
    """The SLURM launcher's two hooks into hydra-submitit-launcher's `launch` (waiting on a job, submitting the
    array) get the originals, hold only during `launch`, and a launch that no longer submits or waits that way is
    one clear error."""
    import submitit
    from submitit.core.core import Job

    before = (Job.results, submitit.AutoExecutor.map_array)

    def launch():
        return Job.results("job"), submitit.AutoExecutor.map_array("executor", "fn", [1, 2])

    got = compat.submitit_launch(launch, lambda original, job: (original is before[0], job),
                                 lambda original, executor, fn, *it: (original is before[1], executor, fn, it))
    assert got == ((True, "job"), (True, "executor", "fn", ([1, 2],)))
    assert (Job.results, submitit.AutoExecutor.map_array) == before

    monkeypatch.setattr(compat, "_checked", set())
    monkeypatch.setattr(compat.inspect, "getsource", lambda fn: "def launch(self, job_overrides): pass")
    with pytest.raises(RuntimeError, match=r"^transferlab\.compat: hydra-submitit-launcher .*: BaseSubmititLauncher"
                                           r"\.launch submitting with executor\.map_array and waiting with Job\."
                                           r"results changed"):
        compat.submitit_launch(launch, None, None)

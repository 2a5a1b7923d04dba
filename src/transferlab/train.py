"""Entry point: compose the config (Hydra), run one experiment, print where the result is.

    python -m transferlab.train target=digits_5to9 transfer.freeze=2 target.n_per_class=10 seed=1
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import transferlab.config  # noqa: F401 - the schemas conf/ is composed with (Hydra's plugin scan imports it too)
from transferlab import conf_source

log = logging.getLogger("transferlab")
# While Hydra composes, `cli` sets this so that a value the schema refuses reaches it as an exception (else Hydra
# prints it and exits 1); `main` clears it first thing, so everything after composition reports as before.
FULL_ERROR = "HYDRA_FULL_ERROR"
_full_error_ours = False


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _report_config_error(e) -> None:
    lines = "\n".join(f"  - {p}" for p in e.problems)
    print(f"transferlab: invalid configuration (nothing was run):\n{lines}", file=sys.stderr)


@hydra.main(config_path=conf_source.search_path(), config_name="config", version_base=conf_source.VERSION_BASE)
def main(cfg: DictConfig) -> float | None:
    if _full_error_ours:
        os.environ.pop(FULL_ERROR, None)  # composed: Hydra reports the rest as it always does
    from transferlab.errors import ConfigError, NonFiniteLossError, disk_problem, failure_text
    from transferlab.run.console import print_result
    from transferlab.run.experiment import run
    from transferlab.store.safe_load import WeightsError

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # Hydra's handlers print and file these
        logging.getLogger(name).handlers.clear()
    from transferlab.run.lease import lease_device

    if _in_sweep():
        from transferlab.sweep import orphan, state

        orphan.watch_parent(state.SWEEP_PID_ENV)  # a local worker leaves when its sweep process dies
        state.mark_started(cfg.paths.output_dir)  # "started" vs "never started" when a launcher loses a batch

    from transferlab.run import ddp
    from transferlab.sweep.group_job import GroupFailed, run_group

    try:
        given = ddp.handoff()
        if given is not None:  # a DDP rank started by its launcher (run/ddp.py): its share of the fit, no table
            ddp.run_rank(cfg, given)
            return None
        with lease_device(cfg):  # concurrent jobs on one machine: each its own GPU / CPU core
            if cfg.get("group"):  # a vectorised seed group: this job trains several points (sweep/group_job.py)
                run_group(cfg)
                return None
            # several devices: this process prepares everything, then starts and watches the DDP ranks
            record = ddp.launch(cfg) if ddp.processes(cfg.trainer) > 1 else run(cfg)
    except ConfigError as e:
        _report_config_error(e)
        if _in_sweep():
            raise  # the sweeper records this point as failed and the other points go on
        raise SystemExit(2) from None
    except (GroupFailed, ddp.RanksFailed) as e:  # each result.json says how it ended
        print(f"transferlab: {e}", file=sys.stderr)
        if _in_sweep():
            raise
        raise SystemExit(1) from None
    except Exception as e:  # expected failures: one line, the record says the rest; anything else: Hydra reports it
        if not isinstance(e, (NonFiniteLossError, WeightsError)) and disk_problem(e) is None:
            raise
        print(f"transferlab: run failed: {failure_text(e)}\n  status 'failed' recorded in "
              f"{Path(cfg.paths.output_dir) / 'result.json'} (if it could be written)", file=sys.stderr)
        if _in_sweep():
            raise
        raise SystemExit(1) from None
    print_result(record, cfg.paths.output_dir)
    return record["metrics"].get("test/acc")


def _exit_code(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return int(e.code or 0)
    print(e.code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def _composition_failed(e: Exception) -> int:
    """Exit code for an exception out of Hydra's main before the task function ran (or in a sweep's process):
    a value the schema refused is an invalid configuration like any other (its line, exit 2); anything else is
    reported by Hydra's own reporter, as without transferlab (exit 1)."""
    from transferlab.compat import hydra_run_and_report
    from transferlab.config import config_error
    from transferlab.errors import ConfigError, disk_problem

    seen: BaseException | None = e  # a ConfigError the sweeper raised for a point (e.g. DDP in a sweep)
    while seen is not None and not isinstance(seen, ConfigError):
        seen = seen.__cause__ or seen.__context__
    error = seen if isinstance(seen, ConfigError) else config_error(e)
    if error is not None:
        _report_config_error(error)
        return 2
    disk = disk_problem(e)
    if disk is not None:  # e.g. Hydra creating the run folder on a read-only or full disk: one line, no traceback
        print(f"transferlab: nothing was run: {disk}; choose another hydra.run.dir / hydra.sweep.dir (or "
              "paths.root_dir), or free space there", file=sys.stderr)
        return 1
    if _full_error_ours:
        os.environ.pop(FULL_ERROR, None)

    def again():
        raise e

    try:
        hydra_run_and_report(again)
    except SystemExit as exit_:
        return _exit_code(exit_)
    return 1  # pragma: no cover - run_and_report always exits or raises


def cli() -> None:
    """`python -m transferlab.train` / `transferlab-train`: Hydra's main, then a fast exit.

    With torch, Lightning and torchmetrics loaded, Python's interpreter teardown (module clean-up, C++ static
    destructors of the CUDA build) takes ~2 s here after the work is done: a sizeable share of a small run and of
    every process in a one-process-per-point loop. Results are on disk by then (written atomically, W&B runs
    finished), so the process runs the exit hooks a normal exit runs (threading's, then atexit), flushes logging and
    stdio, and leaves with os._exit.
    `TRANSFERLAB_FAST_EXIT=0` keeps the normal teardown.
    """
    global _full_error_ours
    _full_error_ours = FULL_ERROR not in os.environ
    os.environ.setdefault(FULL_ERROR, "1")
    try:
        main()
        code = 0
    except SystemExit as e:
        code = _exit_code(e)
    except Exception as e:  # noqa: BLE001 - only what Hydra would have reported itself (see FULL_ERROR)
        code = _composition_failed(e)
    finally:
        if _full_error_ours:
            os.environ.pop(FULL_ERROR, None)
    if os.environ.get("TRANSFERLAB_FAST_EXIT", "1") == "0":
        sys.exit(code)
    import atexit
    import threading

    # The interpreter's own shutdown order, minus the teardown: threading's exit hooks and joins (loky stops its
    # workers there; multiprocessing's atexit below would otherwise wait out their idle timeout), then atexit.
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()  # W&B, multiprocessing and logging handlers run as on a normal exit
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to flush
            pass
    os._exit(code)


if __name__ == "__main__":
    cli()

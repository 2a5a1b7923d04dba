"""Experiment loggers from config: csv (default), wandb (offline unless asked), none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def make_logger(cfg, run_dir: Path, job_type: str, *, axes: dict[str, Any] | None = None):
    kind = str(cfg.logger.kind)
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version=job_type)
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.logger.wandb
        config = OmegaConf.to_container(cfg, resolve=True)
        config.update(axes or {})
        # mode is passed to wandb.init per run; WandbLogger(offline=True) would set WANDB_MODE process-wide.
        def build(mode: str) -> WandbLogger:
            import wandb

            return WandbLogger(
                project=w.project, entity=w.get("entity"), group=w.get("group"), job_type=job_type,
                tags=list(w.get("tags") or []), save_dir=str(run_dir), mode=mode,
                config=config, reinit="finish_previous",
                settings=wandb.Settings(init_timeout=float(w.get("init_timeout", 30))),
            )

        mode = str(w.get("mode", "offline"))
        logger = build(mode)
        if mode == "online":  # init now, bounded by init_timeout: no key / no network never hangs a run
            try:
                logger.experiment
            except Exception as e:  # noqa: BLE001 - any init failure -> offline, the run goes on
                import warnings

                first = str(e).splitlines()[0] if str(e) else ""
                warnings.warn(f"W&B online init failed ({type(e).__name__}: {first}); logging offline instead "
                              f"(upload later with `wandb sync {run_dir}/wandb/offline-run-*`)", stacklevel=2)
                logger = build("offline")
        return logger
    raise ValueError(f"logger.kind={kind!r}: one of csv, wandb, none")


def finish_logger(logger, failed: bool) -> None:
    """End the W&B run of this job (failing exit code on failure) so multirun jobs never merge."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
